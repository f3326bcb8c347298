"""/metrics says what the document says, on a registry of its own."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gpumgr.backend_state import BackendState
from gpumgr.status.document import BackendStatus, DaemonInfo, GpuProcess, GpuStatus
from gpumgr.status.publisher import StatusPublisher

T0 = datetime(2025, 1, 2, tzinfo=UTC)
MIB = 1024 * 1024


def _samples(pub: StatusPublisher) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(pub.metrics.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def _publisher() -> StatusPublisher:
    pub = StatusPublisher(daemon=DaemonInfo(pid=1, started_at=T0))
    pub.set_backends(
        [
            BackendStatus(name="qwen-7b", type="vllm", state="up", restarts=2),
            BackendStatus(name="cloud", type="ollama_cloud", state="rate_limited"),
        ]
    )
    pub.set_gpus(
        [
            GpuStatus(
                index=0, uuid="GPU-0", name="sim", memory_total_mib=16384,
                memory_used_mib=12000, memory_free_mib=4384,
                processes=[
                    GpuProcess(pid=10, used_mib=8000, owner="qwen-7b"),
                    GpuProcess(pid=11, used_mib=2500, owner="ollama"),
                    GpuProcess(pid=12, used_mib=1000, owner="ollama"),
                ],
            )
        ]
    )
    return pub


def test_backend_up_and_one_hot_state_follow_the_document() -> None:
    pub = _publisher()
    s = _samples(pub)
    assert s[_key("gpumgr_backend_up", backend="qwen-7b", type="vllm")] == 1
    assert s[_key("gpumgr_backend_up", backend="cloud", type="ollama_cloud")] == 0
    cloud_states = {
        state: s[_key("gpumgr_backend_state", backend="cloud", state=state.value)]
        for state in BackendState
    }
    assert cloud_states[BackendState.RATE_LIMITED] == 1
    assert sum(cloud_states.values()) == 1
    assert s[_key("gpumgr_backend_restarts_total", backend="qwen-7b")] == 2

    pub.update_backend("qwen-7b", state="down", restarts=3)
    s = _samples(pub)
    assert s[_key("gpumgr_backend_up", backend="qwen-7b", type="vllm")] == 0
    assert s[_key("gpumgr_backend_state", backend="qwen-7b", state="down")] == 1
    assert s[_key("gpumgr_backend_state", backend="qwen-7b", state="up")] == 0
    assert s[_key("gpumgr_backend_restarts_total", backend="qwen-7b")] == 3


def test_gpu_memory_in_bytes_and_process_memory_summed_per_owner() -> None:
    s = _samples(_publisher())
    assert s[_key("gpumgr_gpu_memory_total_bytes", gpu="0")] == 16384 * MIB
    assert s[_key("gpumgr_gpu_memory_used_bytes", gpu="0")] == 12000 * MIB
    assert s[_key("gpumgr_gpu_memory_free_bytes", gpu="0")] == 4384 * MIB
    assert s[_key("gpumgr_gpu_process_memory_bytes", gpu="0", owner="ollama")] == 3500 * MIB
    assert s[_key("gpumgr_gpu_process_memory_bytes", gpu="0", owner="qwen-7b")] == 8000 * MIB


def test_probe_latency_histogram_counts_each_probe() -> None:
    pub = _publisher()
    pub.update_backend("qwen-7b", latency_ms=3.0)
    pub.update_backend("qwen-7b", latency_ms=300.0)
    s = _samples(pub)
    assert s[_key("gpumgr_probe_latency_seconds_count", backend="qwen-7b")] == 2
    assert s[_key("gpumgr_probe_latency_seconds_bucket", backend="qwen-7b", le="0.005")] == 1
    assert abs(s[_key("gpumgr_probe_latency_seconds_sum", backend="qwen-7b")] - 0.303) < 1e-9


def test_a_removed_backend_leaves_metrics() -> None:
    pub = _publisher()
    pub.update_backend("cloud", latency_ms=100.0)
    pub.remove_backend("cloud")
    text = pub.metrics.render().decode()
    assert 'backend="cloud"' not in text


def test_two_publishers_do_not_share_metrics_or_touch_the_global_registry() -> None:
    a, b = _publisher(), _publisher()
    a.update_backend("qwen-7b", latency_ms=1.0)
    count = _key("gpumgr_probe_latency_seconds_count", backend="qwen-7b")
    assert _samples(a)[count] == 1
    assert count not in _samples(b)
    assert REGISTRY.get_sample_value("gpumgr_backend_up", {"backend": "qwen-7b", "type": "vllm"}) is None
