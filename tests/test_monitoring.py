"""Prometheus service discovery and lifecycle metrics, from the pieces the status wiring feeds:
the target list follows the desired state, operation outcomes are classified from the operator's
own wording, and transitions/supervisor events become drain, detection, restart, start-estimate
and time-in-state figures."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gpumgr.backend_state import BackendState as S
from gpumgr.config.registry import Provider
from gpumgr.health.machine import Transition
from gpumgr.status.document import BackendStatus, DaemonInfo, GpuProcess, GpuStatus, StatusDocument
from gpumgr.status.lifecycle import LifecycleTracker
from gpumgr.status.metrics import (
    LifecycleMetrics,
    LifecycleView,
    LoadedModelView,
    StatusMetrics,
    classify_operation,
)
from gpumgr.status.targets import desired_up, prometheus_targets
from gpumgr.engines.probe_result import LoadedModel
from gpumgr.status_wiring import ollama_spill
from gpumgr.supervisor.events import ChildExited, ChildReady, ChildStarted, Restarting

T0 = datetime(2026, 1, 2, tzinfo=UTC)
MIB = 1024 * 1024


def _provider(name: str, port: int, served: str, *, type: str = "vllm", status: str = "active",
              gpu: int = 0) -> Provider:
    return Provider.model_validate({
        "name": name, "type": type, "status": status, "base_url": f"http://127.0.0.1:{port}",
        "gpu": gpu, "models": [{"name": f"org/{served}", "served_model_name": served}],
    })


PROVIDERS = {
    "qwen-7b": _provider("qwen-7b", 8001, "qwen-coder"),
    "qwen-14b": _provider("qwen-14b", 8001, "qwen-coder-14b", status="standby"),
    "deepseek": _provider("deepseek", 8002, "deepseek-coder", gpu=1),
    "ollama": _provider("ollama", 11434, "llama3", type="ollama"),
    "cloud": Provider.model_validate({"name": "cloud", "type": "ollama_cloud",
                                      "base_url": "https://ollama.com", "models": ["gpt-oss"]}),
}


def _doc(**ports: int) -> StatusDocument:
    return StatusDocument.build(
        generated_at=T0, daemon=DaemonInfo(pid=1, started_at=T0), gpus=[],
        backends=[BackendStatus(name=n, type=p.type.value, port=ports.get(n))
                  for n, p in PROVIDERS.items()])


def test_targets_are_the_desired_engines_and_ollama_with_stable_labels() -> None:
    groups = prometheus_targets(_doc(), PROVIDERS, {"qwen-7b", "deepseek"}, set())
    assert groups == [
        {"targets": ["127.0.0.1:8001"], "labels": {
            "gpumgr_backend": "qwen-7b", "model_name": "qwen-coder", "gpu": "0",
            "provider_type": "vllm", "gpumgr_asleep": "false"}},
        {"targets": ["127.0.0.1:8002"], "labels": {
            "gpumgr_backend": "deepseek", "model_name": "deepseek-coder", "gpu": "1",
            "provider_type": "vllm", "gpumgr_asleep": "false"}},
        {"targets": ["127.0.0.1:11434"], "labels": {
            "gpumgr_backend": "ollama", "gpu": "0", "provider_type": "ollama",
            "gpumgr_asleep": "false"}},
    ]


def test_a_swapped_out_engine_leaves_the_list_and_a_sleeping_one_stays_labelled_asleep() -> None:
    after_swap = prometheus_targets(_doc(), PROVIDERS, {"qwen-14b"}, set())
    assert [g["labels"]["gpumgr_backend"] for g in after_swap] == ["qwen-14b", "ollama"]
    assert after_swap[0]["labels"]["model_name"] == "qwen-coder-14b"
    asleep = prometheus_targets(_doc(**{"qwen-7b": 8003}), PROVIDERS, {"qwen-7b", "qwen-14b"},
                                {"qwen-7b"})
    by_name = {g["labels"]["gpumgr_backend"]: g for g in asleep}
    assert by_name["qwen-7b"]["labels"]["gpumgr_asleep"] == "true"
    assert by_name["qwen-7b"]["targets"] == ["127.0.0.1:8003"]  # the port the engine runs on
    assert by_name["qwen-14b"]["labels"]["gpumgr_asleep"] == "false"


def test_desired_up_is_false_for_engines_stopped_or_asleep_on_purpose() -> None:
    up = desired_up(PROVIDERS, {"qwen-7b", "qwen-14b"}, {"qwen-14b"})
    assert up == {"qwen-7b": True, "qwen-14b": False, "deepseek": False, "ollama": True,
                  "cloud": True}


def test_operations_are_classified_from_the_operators_wording() -> None:
    bbm = classify_operation("swap a → b", True, 9.0, {"stop": 1.0, "start": 7.5, "total": 8.6},
                             "swapped a → b in 8.6 s")
    assert (bbm.kind, bbm.mode, bbm.outcome, bbm.seconds, bbm.backends) == (
        "swap", "break_before_make", "ok", 8.6, ("a", "b"))
    mbb = classify_operation("swap a → b", True, 3.0, {"start": 2.0, "stop": 0.5, "total": 2.5},
                             "swapped a → b (make-before-break) in 2.5 s")
    assert mbb.mode == "make_before_break"
    sleep = classify_operation("swap a → b", True, 3.0, {"sleep": 1.0, "wake": 1.5, "total": 2.6},
                               "swapped a → b (sleep mode) in 2.6 s")
    assert sleep.mode == "sleep"
    back = classify_operation("swap a → b", False, 12.0, None, "b exited (1): boom; a is back")
    assert (back.outcome, back.mode, back.seconds) == ("rolled_back", "unknown", 12.0)
    lost = classify_operation("swap a → b", False, 12.0, None,
                              "b exited (1); and a did not come back: timeout")
    assert lost.outcome == "failed"
    start = classify_operation("start a", False, 1.0, None, "a does not fit")
    assert (start.kind, start.mode, start.outcome) == ("start", "-", "failed")


class _Probe:
    def __init__(self) -> None:
        self.view = LifecycleView()
        self.doc = _doc()
        self.status = StatusMetrics(lambda: self.doc)
        self.metrics = LifecycleMetrics(self.status, lambda: self.doc, lambda: self.view)
        self.now = 1000.0
        self.tracker = LifecycleTracker(self.metrics, clock=lambda: self.now)

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        out = {}
        for fam in text_string_to_metric_families(self.status.render().decode()):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def value(self, name: str, **labels: str) -> Any:
        return self.samples().get((name, frozenset(labels.items())))

    def move(self, backend: str, old: S, new: S, at: float, estimate: float | None = None) -> None:
        self.tracker.transition(Transition(backend, old, new, "", at), estimate)


def test_drain_death_and_hang_detection_come_from_transitions() -> None:
    p = _Probe()
    p.tracker.seed("a", S.UP, 900.0)
    p.move("a", S.UP, S.DRAINING, 1000.0)
    p.move("a", S.DRAINING, S.STOPPING, 1002.5)
    assert p.value("gpumgr_backend_drain_seconds_sum", backend="a") == 2.5
    # a death: the supervisor's exit event moves it while the event is being applied
    p.tracker.seed("b", S.UP, 900.0)
    p.tracker.probe_ok("b", 1010.0)
    exited = ChildExited("b", 42, -9, False, "")
    p.tracker.before_event(exited)
    p.move("b", S.UP, S.DOWN, 1010.4)
    p.tracker.after_event(exited)
    assert p.value("gpumgr_failure_detection_seconds_count", backend="b", kind="death") == 1
    assert abs(p.value("gpumgr_failure_detection_seconds_sum", backend="b", kind="death") - 0.4) < 1e-9
    # a hang: probes take it down, no exit seen
    p.tracker.seed("c", S.UP, 900.0)
    p.tracker.probe_ok("c", 1020.0)
    p.move("c", S.UP, S.DOWN, 1026.0)
    assert p.value("gpumgr_failure_detection_seconds_sum", backend="c", kind="hang") == 6.0
    assert p.value("gpumgr_failure_detection_seconds_count", backend="c", kind="death") is None


def test_restart_reasons_come_from_the_exit_before_the_restart() -> None:
    p = _Probe()
    for name in ("a",):
        p.tracker.seed(name, S.UP, 0.0)
    assert p.value("gpumgr_backend_restarts_by_reason_total", backend="a", reason="oom") == 0
    for exited in (ChildExited("a", 1, 1, True, "CUDA out of memory"),
                   ChildExited("a", 2, -15, False, "unresponsive: down for 30 s"),
                   ChildExited("a", 3, 1, False, "RuntimeError")):
        p.tracker.before_event(exited)
        p.tracker.after_event(exited)
        restarting = Restarting("a", 1.0, 1, "exited")
        p.tracker.before_event(restarting)
        p.tracker.after_event(restarting)
    p.tracker.reloaded(["a"])
    for reason in ("oom", "hang", "crash", "reload"):
        assert p.value("gpumgr_backend_restarts_by_reason_total", backend="a", reason=reason) == 1


def test_cold_start_and_start_estimate_error_skip_adopted_engines_and_wakes() -> None:
    p = _Probe()
    p.tracker.seed("a", S.STOPPED, 0.0)
    p.tracker.before_event(ChildStarted("a", 7, 8001, 0.9))
    p.move("a", S.STOPPED, S.STARTING, 100.0, estimate=40.0)
    p.tracker.before_event(ChildReady("a", 7, 44.0))
    p.move("a", S.STARTING, S.UP, 145.0)
    assert p.value("gpumgr_backend_cold_start_seconds_sum", backend="a") == 44.0
    assert p.value("gpumgr_start_estimate_error_seconds", backend="a") == 5.0
    assert p.value("gpumgr_start_estimate_abs_error_seconds_count", backend="a") == 1
    p.move("a", S.UP, S.SLEEPING, 200.0)
    p.move("a", S.SLEEPING, S.STARTING, 210.0, estimate=40.0)  # a wake is no cold start
    p.move("a", S.STARTING, S.UP, 212.0)
    p.tracker.before_event(ChildStarted("a", 8, 8001, None, adopted=True))
    p.move("a", S.UP, S.STARTING, 300.0, estimate=40.0)  # (an adoption)
    p.tracker.before_event(ChildReady("a", 8, 0.1, adopted=True))
    p.move("a", S.STARTING, S.UP, 300.5)
    assert p.value("gpumgr_start_estimate_abs_error_seconds_count", backend="a") == 1
    assert p.value("gpumgr_backend_cold_start_seconds_count", backend="a") == 1


def test_time_in_each_state_counts_the_current_stay() -> None:
    p = _Probe()
    p.tracker.seed("a", S.STOPPED, 0.0)
    p.move("a", S.STOPPED, S.STARTING, 10.0)
    p.move("a", S.STARTING, S.UP, 40.0)
    seconds = p.tracker.state_seconds(now=100.0)
    assert seconds == {("a", "stopped"): 10.0, ("a", "starting"): 30.0, ("a", "up"): 60.0}
    p.tracker.forget("a")
    assert p.tracker.state_seconds(now=200.0) == {}


def test_vram_planned_and_used_per_engine_and_ollama_cpu_share() -> None:
    p = _Probe()
    gpu = GpuStatus(index=0, uuid="GPU-0", name="sim", memory_total_mib=24576,
                    memory_used_mib=20000, memory_free_mib=4576,
                    processes=[GpuProcess(pid=7, used_mib=18000, owner="qwen-7b"),
                               GpuProcess(pid=8, used_mib=500, owner="qwen-7b"),
                               GpuProcess(pid=9, used_mib=1500, owner="ollama")])
    p.doc = StatusDocument.build(
        generated_at=T0, daemon=DaemonInfo(pid=1, started_at=T0), gpus=[gpu],
        backends=[BackendStatus(name="qwen-7b", type="vllm", state="up", pid=7,
                                gpu_memory_utilization=0.75),
                  BackendStatus(name="qwen-14b", type="vllm", state="stopped")])
    p.view = LifecycleView(
        desired_up={"qwen-7b": True}, gpu_of={"qwen-7b": 0, "qwen-14b": 0},
        ollama_loaded={"ollama": (LoadedModelView("llama3:latest", 8 * 2**30, 6 * 2**30),)})
    assert p.value("gpumgr_backend_vram_planned_bytes", backend="qwen-7b", gpu="0") == 18432 * MIB
    assert p.value("gpumgr_backend_vram_used_bytes", backend="qwen-7b", gpu="0") == 18500 * MIB
    assert p.value("gpumgr_backend_vram_planned_bytes", backend="qwen-14b", gpu="0") is None
    assert p.value("gpumgr_backend_desired_up", backend="qwen-7b", type="vllm") == 1
    assert p.value("gpumgr_backend_desired_up", backend="qwen-14b", type="vllm") == 0
    assert p.value("gpumgr_ollama_model_cpu_ratio", backend="ollama", model="llama3:latest") == 0.25


def test_an_ollama_model_with_part_of_it_on_the_cpu_gives_the_degraded_reason_with_the_share() -> None:
    gib = 2**30
    assert ollama_spill([LoadedModel("llama3:latest", 8 * gib, 8 * gib)]) == ""
    assert ollama_spill([]) == ""
    assert ollama_spill([LoadedModel("llama3:latest", 8 * gib, 8 * gib),
                         LoadedModel("big:latest", 12 * gib, 9 * gib)]) == (
        "spilling to CPU: big:latest 25 % on CPU (3.0 of 12.0 GiB)")
