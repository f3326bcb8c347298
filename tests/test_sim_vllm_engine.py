"""The simulated vLLM engine, run as a real process on 127.0.0.1 against a simulated GPU.

Each test starts ``python -m gpumgr.sim.vllm serve ...`` in its own process group (as the
supervisor does) and the fixture kills the group in teardown, whatever happened.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from gpumgr.engines.vllm import OomKind, find_oom, last_error_line, parse_memory_report
from gpumgr.modelfiles import header_only_safetensors
from gpumgr.sim.gpu import SimGpuSpec, SimGpuState, SimSnapshot, sim_uuid
from tests.helpers import free_port, wait_for

MIB = 1024**2
GIB = 1024**3
UUID = sim_uuid(0)
CONTEXT_MIB = 500
QWEN7B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
    "torch_dtype": "float16", "quantization_config": {"quant_method": "awq", "bits": 4},
}  # fmt: skip


@dataclass
class Engine:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def health(self, timeout_s: float = 5.0) -> int | None:
        try:
            return httpx2.get(self.url + "/health", timeout=timeout_s).status_code
        except httpx2.TransportError:
            return None

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        wait_for(lambda: self.health() == 200 or self.proc.poll() is not None, timeout_s, "/health")
        assert self.health() == 200, "\n".join(self.log())

    def wait_exit(self, timeout_s: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout_s)


def make_snapshot(root: Path, weights_bytes: int, config: dict[str, object] | None = None) -> Path:
    snap = root / f"snap-{weights_bytes}"
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "config.json").write_text(json.dumps(config or QWEN7B_CONFIG))
    (snap / "model.safetensors").write_bytes(header_only_safetensors(weights_bytes))
    return snap


@pytest.fixture
def card(tmp_path: Path) -> SimGpuState:
    state = SimGpuState(tmp_path / "gpu" / "state.json")
    state.ensure([SimGpuSpec(0, UUID, memory_total_mib=16384, display_used_mib=300)])
    return state


@pytest.fixture
def qwen7b(tmp_path: Path) -> Path:
    return make_snapshot(tmp_path, int(5.2 * GIB))


@pytest.fixture
def start_engine(tmp_path: Path, card: SimGpuState, qwen7b: Path) -> Iterator[Callable[..., Engine]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*flags: str, env: dict[str, str] | None = None, fraction: float = 0.62,
              snapshot: Path | None = None, port: int | None = None) -> Engine:  # fmt: skip
        port = port or free_port()
        log_path = tmp_path / f"engine-{port}.log"
        argv = [sys.executable, "-m", "gpumgr.sim.vllm", "serve", str(snapshot or qwen7b),
                "--served-model-name", "qwen-coder-vllm", "qwen-coder", "--host", "127.0.0.1",
                "--port", str(port), "--gpu-memory-utilization", str(fraction),
                "--max-model-len", "8192", "--max-num-seqs", "16", "--dtype", "half",
                "--quantization", "awq_marlin", *flags]  # fmt: skip
        child_env = {**os.environ, "GPUMGR_SIM_GPU_STATE": str(card.path),
                     "CUDA_VISIBLE_DEVICES": UUID, "GPUMGR_SIM_LOAD_SECONDS": "0.1",
                     "GPUMGR_SIM_TOKEN_DELAY_S": "0", **(env or {})}  # fmt: skip
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        started.append(proc)
        return Engine(proc, port, log_path)

    try:
        yield start
    finally:
        for proc in started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)


def held_mib(card: SimGpuState, pid: int) -> int:
    return sum(a.used_mib for a in card.read().allocations if a.pid == pid)


def planned_mib(fraction: float) -> int:
    return CONTEXT_MIB + -(-int(16384 * MIB * fraction) // MIB)


# -- start, serve, stop ----------------------------------------------------------------------


def test_engine_refuses_connections_while_loading_then_serves_with_its_allocation(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    engine = start_engine(env={"GPUMGR_SIM_LOAD_SECONDS": "2.0"})  # room to look, loaded
    wait_for(lambda: held_mib(card, engine.proc.pid) > CONTEXT_MIB, what="weights loading")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", engine.port), timeout=1).close()
    engine.wait_healthy()
    assert held_mib(card, engine.proc.pid) == planned_mib(0.62)
    report = parse_memory_report(engine.log())
    assert report.complete and report.max_model_len == 8192


def test_models_version_and_deterministic_chat_answers(start_engine: Callable[..., Engine]) -> None:
    engine = start_engine()
    engine.wait_healthy()
    models = httpx2.get(engine.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["qwen-coder-vllm", "qwen-coder"]
    assert httpx2.get(engine.url + "/version").json()["version"] == "0.33.0"
    body = {"model": "qwen-coder", "messages": [{"role": "user", "content": "write a sort"}]}
    first = httpx2.post(engine.url + "/v1/chat/completions", json=body).json()
    second = httpx2.post(engine.url + "/v1/chat/completions", json=body).json()
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
    assert first["usage"]["completion_tokens"] > 0
    missing = httpx2.post(engine.url + "/v1/completions", json={"model": "gpt-4", "prompt": "x"})
    assert missing.status_code == 404 and "does not exist" in missing.json()["error"]["message"]


def test_streaming_sends_sse_chunks_ending_with_done(start_engine: Callable[..., Engine]) -> None:
    engine = start_engine()
    engine.wait_healthy()
    body = {"model": "qwen-coder-vllm", "messages": [{"role": "user", "content": "hi"}],
            "stream": True, "max_tokens": 4}  # fmt: skip
    with httpx2.stream("POST", engine.url + "/v1/chat/completions", json=body) as resp:
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "This is a simulated"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def _gauge(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + "{") and 'model_name="qwen-coder-vllm"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_requests_beyond_max_num_seqs_wait_and_metrics_show_it(
    start_engine: Callable[..., Engine],
) -> None:
    engine = start_engine("--max-num-seqs", "2", env={"GPUMGR_SIM_TOKEN_DELAY_S": "0.05"})
    engine.wait_healthy()
    body = {"model": "qwen-coder-vllm", "prompt": "x", "max_tokens": 10}

    def snapshot() -> tuple[float, float, float]:
        text = httpx2.get(engine.url + "/metrics").text
        return (_gauge(text, "vllm:num_requests_running"),
                _gauge(text, "vllm:num_requests_waiting"),
                _gauge(text, "vllm:kv_cache_usage_perc"))  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(httpx2.post, engine.url + "/v1/completions", json=body, timeout=10)
                   for _ in range(4)]  # fmt: skip
        wait_for(lambda: snapshot()[:2] == (2.0, 2.0), what="2 running, 2 waiting")
        assert snapshot()[2] > 0
        assert all(f.result().status_code == 200 for f in futures)
    assert snapshot() == (0.0, 0.0, 0.0)


def test_sigterm_shuts_down_gracefully_and_frees_the_memory(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    engine = start_engine()
    engine.wait_healthy()
    engine.proc.send_signal(signal.SIGTERM)
    assert engine.wait_exit() == 0
    assert held_mib(card, engine.proc.pid) == 0
    assert card.read().free_mib(UUID) == 16384 - 300


def test_sigterm_while_loading_exits_at_once(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    engine = start_engine(env={"GPUMGR_SIM_LOAD_SECONDS": "60"})
    wait_for(lambda: held_mib(card, engine.proc.pid) > 0, what="context registered")
    engine.proc.send_signal(signal.SIGTERM)
    assert engine.wait_exit(timeout_s=10) == 0  # not the 60 s load


# -- refusals ----------------------------------------------------------------------------------


def test_too_large_a_fraction_exits_with_vllms_own_message(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    card.allocate(os.getpid(), UUID, 8000, "someone-else")
    try:
        engine = start_engine(fraction=0.62)
        assert engine.wait_exit() == 1
    finally:
        card.release(os.getpid())
    found = find_oom(engine.log())
    assert found is not None and found.kind is OomKind.FREE_MEMORY_AT_START
    assert found.fraction == 0.62
    assert "Decrease GPU memory utilization" in engine.log()[-1]
    assert held_mib(card, engine.proc.pid) == 0


def test_memory_released_by_others_while_it_profiles_fails_the_start_like_vllm(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    card.allocate(os.getpid(), UUID, 8000, "someone-else")
    try:
        engine = start_engine(fraction=0.3, env={"GPUMGR_SIM_LOAD_SECONDS": "0.8"})
        wait_for(lambda: held_mib(card, engine.proc.pid) > CONTEXT_MIB, what="loading")
    finally:
        card.release(os.getpid())
    assert engine.wait_exit() == 1
    assert "Error in memory profiling" in (last_error_line(engine.log()) or "")


def test_a_port_held_by_another_listener_fails_the_start_after_loading(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        engine = start_engine(port=foreign.getsockname()[1])
        assert engine.wait_exit() == 1
    assert "Address already in use" in (last_error_line(engine.log()) or "")
    assert held_mib(card, engine.proc.pid) == 0


def test_unknown_flag_is_rejected_like_argparse(start_engine: Callable[..., Engine]) -> None:
    engine = start_engine("--max-modle-len", "4")
    assert engine.wait_exit() == 2
    assert "vllm serve: error: unrecognized arguments: --max-modle-len" in engine.log()[-1]


def test_flags_it_does_not_act_on_are_accepted(start_engine: Callable[..., Engine]) -> None:
    engine = start_engine("--enable-prefix-caching", "--kv-cache-dtype", "auto", "--seed", "7",
                          "--disable-log-requests")  # fmt: skip
    engine.wait_healthy()


@pytest.mark.parametrize(
    "flags, config, message",
    [
        (["--dtype", "bfloat16"], None, "Bfloat16 is only supported on GPUs with compute"),
        ([], {**QWEN7B_CONFIG, "quantization_config": None}, "does not match the quantization"),
        (["--max-model-len", "65536"], None, "greater than the derived max_model_len"),
    ],
)
def test_settings_vllm_rejects_are_rejected_before_loading(
    start_engine: Callable[..., Engine], tmp_path: Path, flags: list[str],
    config: dict[str, object] | None, message: str,
) -> None:  # fmt: skip
    snapshot = make_snapshot(tmp_path / "odd", GIB, config) if config else None
    engine = start_engine(*flags, snapshot=snapshot)
    assert engine.wait_exit() == 1
    assert message in (last_error_line(engine.log()) or "")


# -- chaos -------------------------------------------------------------------------------------


def test_crash_after_n_seconds_exits_1_with_a_traceback(
    start_engine: Callable[..., Engine],
) -> None:
    engine = start_engine(env={"GPUMGR_SIM_CRASH_AFTER_S": "2"})  # seen healthy first
    engine.wait_healthy()
    assert engine.wait_exit() == 1
    assert engine.log()[-1].startswith("RuntimeError: CUDA error: an illegal memory access")
    assert "Traceback (most recent call last):" in engine.log()
    assert find_oom(engine.log()) is None


def test_oom_at_start_exits_with_a_cuda_out_of_memory_trace(
    start_engine: Callable[..., Engine],
) -> None:
    engine = start_engine(env={"GPUMGR_SIM_OOM_AT_START": "1"})
    assert engine.wait_exit() == 1
    found = find_oom(engine.log())
    assert found is not None and found.kind is OomKind.CUDA_OOM
    assert engine.health() is None


def test_hang_stops_answering_but_stays_alive_until_terminated(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    engine = start_engine(env={"GPUMGR_SIM_HANG_AFTER_S": "2"})  # seen healthy first
    engine.wait_healthy()
    wait_for(lambda: engine.health(timeout_s=0.3) is None, what="the engine to hang")
    assert engine.proc.poll() is None
    socket.create_connection(("127.0.0.1", engine.port), timeout=1).close()  # port still open
    engine.proc.send_signal(signal.SIGTERM)
    assert engine.wait_exit() == 0
    assert held_mib(card, engine.proc.pid) == 0


def test_engine_death_turns_health_503(start_engine: Callable[..., Engine]) -> None:
    engine = start_engine(env={"GPUMGR_SIM_ENGINE_DEAD_AFTER_S": "2"})  # seen healthy first
    engine.wait_healthy()
    wait_for(lambda: engine.health() == 503, what="/health 503")


def _group_pids(pgid: int) -> set[int]:
    """Live members of the process group (an orphaned zombie waits for init to reap it)."""
    out = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(pgid)], capture_output=True, text=True)
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    return {int(pid) for pid, stat in rows if not stat.startswith("Z")}


def _ignores_sigterm(pid: int) -> bool:
    """SIGTERM is in the process's ignored-signal mask (``SigIgn`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_grandchild_holds_the_memory_until_the_whole_group_is_killed(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    engine = start_engine(env={"GPUMGR_SIM_GRANDCHILD": "1"})
    engine.wait_healthy()
    holders = {a.pid for a in card.read().allocations}
    assert len(holders) == 1 and engine.proc.pid not in holders
    (grandchild,) = holders
    assert os.getpgid(grandchild) == engine.proc.pid
    os.kill(engine.proc.pid, signal.SIGKILL)  # the API server alone, as pkill would
    engine.wait_exit()
    assert held_mib(card, grandchild) == planned_mib(0.62)
    os.killpg(engine.proc.pid, signal.SIGKILL)
    wait_for(lambda: held_mib(card, grandchild) == 0, what="memory back")


def test_ignore_sigterm_survives_a_group_sigterm_and_falls_to_sigkill(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    engine = start_engine(env={"GPUMGR_SIM_IGNORE_SIGTERM": "1", "GPUMGR_SIM_GRANDCHILD": "1"})
    engine.wait_healthy()
    members = _group_pids(engine.proc.pid)
    assert len(members) == 2 and all(_ignores_sigterm(p) for p in members)  # what it looks at
    os.killpg(engine.proc.pid, signal.SIGTERM)
    time.sleep(0.3)  # proving that nothing happens needs a (short) wait
    assert engine.proc.poll() is None and _group_pids(engine.proc.pid) == members
    assert engine.health() == 200
    os.killpg(engine.proc.pid, signal.SIGKILL)
    engine.wait_exit()
    wait_for(lambda: not _group_pids(engine.proc.pid), what="group gone")
    assert card.read().free_mib(UUID) == 16384 - 300


# -- sleep mode and GPU sharing ----------------------------------------------------------------


def test_sleep_mode_frees_weights_and_kv_but_keeps_the_context(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    engine = start_engine("--enable-sleep-mode", env={"VLLM_SERVER_DEV_MODE": "1"})
    engine.wait_healthy()
    assert httpx2.post(engine.url + "/sleep", params={"level": "1"}).status_code == 200
    assert httpx2.get(engine.url + "/is_sleeping").json() == {"is_sleeping": True}
    assert held_mib(card, engine.proc.pid) == CONTEXT_MIB
    assert engine.health() == 200
    assert httpx2.post(engine.url + "/wake_up").status_code == 200
    assert held_mib(card, engine.proc.pid) == planned_mib(0.62)


def test_sleep_endpoints_need_dev_mode(start_engine: Callable[..., Engine]) -> None:
    engine = start_engine("--enable-sleep-mode")
    engine.wait_healthy()
    assert httpx2.post(engine.url + "/sleep").status_code == 404


def test_api_key_from_the_environment_protects_the_openai_routes(
    start_engine: Callable[..., Engine],
) -> None:
    engine = start_engine(env={"VLLM_API_KEY": "k-1"})
    engine.wait_healthy()
    assert httpx2.get(engine.url + "/v1/models").status_code == 401
    ok = httpx2.get(engine.url + "/v1/models", headers={"Authorization": "Bearer k-1"})
    assert ok.status_code == 200


def _events(path: Path) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        e = json.loads(line)
        out.setdefault(e["pid"], {})[e["event"]] = e["t"]
    return out


def test_two_engines_initialising_together_charge_each_other_like_vllm(
    start_engine: Callable[..., Engine], card: SimGpuState, tmp_path: Path
) -> None:
    small = make_snapshot(tmp_path / "small", 1 * GIB)
    events = tmp_path / "events.jsonl"
    env = {"GPUMGR_SIM_LOAD_SECONDS": "1.0", "GPUMGR_SIM_EVENTS_FILE": str(events)}
    alone = start_engine(snapshot=small, fraction=0.3, env=env)
    alone.wait_healthy()
    alone.proc.send_signal(signal.SIGTERM)
    assert alone.wait_exit() == 0
    kv_alone = parse_memory_report(alone.log()).kv_cache_bytes
    assert kv_alone is not None

    a = start_engine(snapshot=small, fraction=0.3, env=env)
    wait_for(lambda: held_mib(card, a.proc.pid) > 0, what="a's context")
    b = start_engine(snapshot=small, fraction=0.3, env=env)
    a.wait_healthy()
    b.wait_healthy()
    kv = [parse_memory_report(e.log()).kv_cache_bytes for e in (a, b)]
    assert all(k is not None for k in kv)
    assert sum(k for k in kv if k) < 2 * kv_alone  # someone paid for the other's allocation
    ta, tb = _events(events)[a.proc.pid], _events(events)[b.proc.pid]
    assert ta["init_start"] < tb["init_end"] and tb["init_start"] < ta["init_end"]  # overlapped
    assert ta["init_end"] <= ta["serving"]
