"""Start sequencing, keep-alive and stop, driving the simulated vLLM engine (real processes).

Each test gets its own simulated GPU state file, log/state directories and run-time ports;
every keeper is stopped in a ``finally`` so no engine outlives its test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import psutil
import pytest

from gpumgr.actions.keeper import BackendKeeper
from gpumgr.actions.lease import GpuLocks
from gpumgr.actions.start import LaunchSpec, PrepareHint, StartContext, StartTiming
from gpumgr.actions.stop import StopTiming
from gpumgr.backend_state import BackendState
from gpumgr.engines.vllm_log import find_oom
from gpumgr.health.supervisor_events import apply_supervisor_event
from gpumgr.modelfiles import header_only_safetensors
from gpumgr.sim.gpu import STATE_ENV, SimGpuSpec, SimGpuState, sim_uuid
from gpumgr.supervisor import events as ev
from gpumgr.supervisor.records import ChildRecords
from gpumgr.supervisor.restart import RestartPolicy
from gpumgr.supervisor.system import System
from state_fake import States
from tests.helpers import alive, free_port

GIB = 1024**3
UUID = sim_uuid(0)
QWEN_7B = {  # published dims (DESIGN.md §3)
    "architectures": ["Qwen2ForCausalLM"],
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_size": 3584,
    "max_position_embeddings": 32768,
    "quantization_config": {"quant_method": "awq", "bits": 4},
}


class Harness:
    """A simulated card, a snapshot, and keepers whose events are recorded with their time."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.snapshot = tmp / "snapshot"
        self.snapshot.mkdir()
        (self.snapshot / "config.json").write_text(json.dumps(QWEN_7B))
        (self.snapshot / "model.safetensors").write_bytes(header_only_safetensors(int(5.2 * GIB)))
        self.gpu = SimGpuState(tmp / "sim-gpu.json")
        self.gpu.ensure([SimGpuSpec(index=0, uuid=UUID)])
        self.events: list[tuple[float, ev.SupervisorEvent]] = []
        self.engine_events = tmp / "engine-events.jsonl"
        self.states = States()

        async def released(pids: frozenset[int]) -> bool:
            return not any(a.pid in pids for a in self.gpu.read().allocations)

        self.ctx = StartContext(
            log_dir=tmp / "log",
            records=ChildRecords(tmp / "state"),
            locks=GpuLocks(),
            sink=self._record,
            find_oom=find_oom,
            timing=StartTiming(start_timeout_s=20.0, poll_s=0.05),
            stop=StopTiming(5.0, 5.0),
            memory_released=released,
        )
        self.keepers: list[BackendKeeper] = []

    def _record(self, event: ev.SupervisorEvent) -> None:
        self.events.append((time.monotonic(), event))
        apply_supervisor_event(self.states, event)

    def state(self, k: BackendKeeper) -> BackendState:
        return self.states._get(k.backend).state

    def detail(self, k: BackendKeeper) -> str:
        return self.states._get(k.backend).reason

    def restarts(self, k: BackendKeeper) -> int:
        return self.states._get(k.backend).restarts

    async def stop(self, k: BackendKeeper):  # type: ignore[no-untyped-def]
        async with self.ctx.locks.lease(k.gpu_uuid, "test stop") as lease:
            return await k.stop(lease)

    def spec(self, backend: str, port: int, fraction: float, **env: str) -> LaunchSpec:
        argv = [
            sys.executable, "-m", "gpumgr.sim.vllm", "serve", str(self.snapshot),
            "--served-model-name", backend, "--host", "127.0.0.1", "--port", str(port),
            "--gpu-memory-utilization", f"{fraction:g}", "--max-model-len", "4096",
            "--max-num-seqs", "4", "--dtype", "half", "--quantization", "awq_marlin",
        ]  # fmt: skip
        base = {
            "CUDA_VISIBLE_DEVICES": UUID,
            STATE_ENV: str(self.gpu.path),
            "GPUMGR_SIM_LOAD_SECONDS": "0.3",
            "GPUMGR_SIM_EVENTS_FILE": str(self.engine_events),
        }
        return LaunchSpec(backend, argv, {**base, **env}, port, UUID, fraction)

    def keeper(
        self,
        backend: str,
        fraction: float = 0.4,
        *,
        policy: RestartPolicy | None = None,
        stop_timeout_s: float = 5.0,
        port: int | None = None,
        **env: str,
    ) -> BackendKeeper:
        port = port or free_port()

        async def prepare(hint: PrepareHint) -> LaunchSpec:
            return self.spec(backend, port, fraction, **env)

        self.ctx.stop = StopTiming(stop_timeout_s, 5.0)
        k = BackendKeeper(
            backend, UUID, port, prepare, self.ctx,
            policy or RestartPolicy(backoff_base_s=0.1, backoff_cap_s=0.4, max_crashes=3),
            port_recheck_s=0.1,
        )  # fmt: skip
        self.keepers.append(k)
        return k

    def of(self, kind: type, backend: str | None = None) -> list[tuple[float, object]]:
        return [
            (t, e) for t, e in self.events
            if isinstance(e, kind) and (backend is None or getattr(e, "backend", None) == backend)
        ]  # fmt: skip

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; events: {self.events}"
            await asyncio.sleep(0.02)

    async def stop_all(self) -> None:
        for k in self.keepers:
            await self.stop(k)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    for k in h.keepers:  # last resort if a test's own finally did not run
        if k.child is not None:
            try:
                os.killpg(k.child.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run(h: Harness, body: Callable[[], object]) -> None:
    async def main() -> None:
        try:
            await body()  # type: ignore[misc]
        finally:
            await h.stop_all()

    asyncio.run(main())


def health(port: int) -> int:
    return httpx2.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code


def test_start_serves_health_with_the_planned_fraction_and_the_gpu_shows_it(harness: Harness) -> None:
    h = harness
    k = h.keeper("qwen-7b", fraction=0.42)

    async def body() -> None:
        k.launch()
        await h.until(lambda: h.state(k) is BackendState.UP)
        assert k.child is not None
        assert health(k.port) == 200
        cmd = psutil.Process(k.child.pid).cmdline()
        assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.42"
        snap = h.gpu.read()
        held = sum(a.used_mib for a in snap.allocations if a.gpu_uuid == UUID)
        assert held >= 0.42 * 16384  # the slice plus the engine's CUDA context
        record = h.ctx.records.load()["qwen-7b"]
        assert (record.pid, record.fraction, record.port) == (k.child.pid, 0.42, k.port)

    run(h, body)
    assert h.gpu.read().allocations == ()
    assert h.ctx.records.load() == {}


def test_sigkill_is_noticed_at_once_and_the_engine_is_restarted_with_backoff(harness: Harness) -> None:
    h = harness
    k = h.keeper("qwen-7b")

    async def body() -> None:
        k.launch()
        await h.until(lambda: h.state(k) is BackendState.UP)
        assert k.child is not None
        first = k.child.pid
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        await h.until(lambda: bool(h.of(ev.ChildExited)))
        noticed_at, exited = h.of(ev.ChildExited)[0]
        assert noticed_at - killed_at < 1.0  # the exit itself, not a probe (measured ~2 ms)
        assert exited.returncode == -signal.SIGKILL and not exited.oom  # type: ignore[attr-defined]
        (_, restarting), = h.of(ev.Restarting)
        assert restarting.delay_s == 0.1 and restarting.attempt == 1  # type: ignore[attr-defined]
        await h.until(lambda: h.state(k) is BackendState.UP and k.child is not None and k.child.pid != first)
        assert health(k.port) == 200
        assert h.restarts(k) == 1

    run(h, body)


def test_a_crash_loop_ends_in_failed_with_the_engine_error_and_no_cpu_spin(harness: Harness) -> None:
    h = harness
    policy = RestartPolicy(backoff_base_s=0.2, backoff_cap_s=0.4, max_crashes=2, window_s=60)
    k = h.keeper("qwen-7b", policy=policy, GPUMGR_SIM_CRASH_AFTER_S="0.1")

    async def body() -> None:
        cpu0, wall0 = time.process_time(), time.monotonic()
        k.launch()
        await h.until(lambda: h.state(k) is BackendState.FAILED, timeout_s=30)
        cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
        assert len(h.of(ev.ChildStarted)) == 3  # first start + 2 restarts
        assert [e.delay_s for _, e in h.of(ev.Restarting)] == [0.2, 0.4]  # type: ignore[attr-defined]
        assert "3 crashes within 60s" in h.detail(k)
        assert "Error" in h.detail(k)  # the engine's own last error line
        (_, failed), = h.of(ev.BackendFailed)
        assert failed.detail == h.detail(k)  # type: ignore[attr-defined]
        assert wall_s >= 0.6  # the backoff really waited
        assert cpu_s < 0.6 * wall_s, f"daemon side burnt {cpu_s:.2f}s CPU in {wall_s:.2f}s"
        await asyncio.sleep(0.3)
        assert len(h.of(ev.ChildStarted)) == 3  # failed means no further tries

    run(h, body)


def test_too_large_a_fraction_fails_with_vllms_message_and_is_not_retried(harness: Harness) -> None:
    h = harness
    squatter = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        h.gpu.allocate(squatter.pid, UUID, 8000, "someone-else")
        k = h.keeper("qwen-7b", fraction=0.9)

        async def body() -> None:
            k.launch()
            await h.until(lambda: h.state(k) is BackendState.FAILED)
            (_, exited), = h.of(ev.ChildExited)
            assert exited.oom  # type: ignore[attr-defined]
            assert "less than desired GPU memory utilization" in exited.last_error  # type: ignore[attr-defined]
            assert "no smaller slice fits" in h.detail(k)
            assert "less than desired GPU memory utilization" in h.detail(k)
            assert len(h.of(ev.ChildStarted)) == 1

        run(h, body)
    finally:
        squatter.kill()
        squatter.wait()


def test_two_providers_started_together_never_initialise_at_the_same_time(harness: Harness) -> None:
    h = harness
    a, b = h.keeper("qwen-7b", 0.45), h.keeper("deepseek-6.7b", 0.45)

    async def body() -> None:
        a.launch()
        b.launch()
        await h.until(lambda: h.state(a) is BackendState.UP and h.state(b) is BackendState.UP)
        lines = [json.loads(x) for x in h.engine_events.read_text().splitlines()]
        inits = [(x["pid"], x["event"]) for x in lines if x["event"] in ("init_start", "init_end")]
        assert a.child is not None and b.child is not None
        first, second = (inits[0][0], inits[2][0])  # whichever got the card first
        assert {first, second} == {a.child.pid, b.child.pid}
        assert inits == [
            (first, "init_start"), (first, "init_end"),
            (second, "init_start"), (second, "init_end"),
        ]  # fmt: skip
        names = {a.child.pid: "qwen-7b", b.child.pid: "deepseek-6.7b"}
        (ready_first, _), = h.of(ev.ChildReady, names[first])
        (started_second, _), = h.of(ev.ChildStarted, names[second])
        assert started_second >= ready_first  # the lease is held until /health answered 200

    run(h, body)


def test_stop_kills_an_engine_that_ignores_sigterm_with_its_grandchild_and_frees_memory(
    harness: Harness,
) -> None:
    h = harness
    k = h.keeper(
        "qwen-7b", stop_timeout_s=0.5, GPUMGR_SIM_IGNORE_SIGTERM="1", GPUMGR_SIM_GRANDCHILD="1"
    )

    async def body() -> None:
        k.launch()
        await h.until(lambda: h.state(k) is BackendState.UP)
        assert k.child is not None
        pgid = k.child.pgid
        group = [p.pid for p in psutil.process_iter() if _pgid(p.pid) == pgid]
        assert len(group) >= 2  # engine + grandchild
        assert h.gpu.read().allocations
        outcome = await h.stop(k)
        assert outcome is not None and outcome.killed and outcome.group_gone
        assert outcome.memory_released
        assert 0.5 <= outcome.stop_s < 5
        assert not [p for p in group if psutil.pid_exists(p) and alive(p)]
        assert h.gpu.read().allocations == ()
        assert h.state(k) is BackendState.STOPPED

    run(h, body)


class CountingPortChecks(System):
    """The real system calls, counting the keeper's looks at who holds a port."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    def port_listener_pid(self, port: int) -> int | None:
        self.ports.append(port)
        return super().port_listener_pid(port)


def test_a_foreign_listener_on_the_port_is_reported_and_left_alone(harness: Harness) -> None:
    h = harness
    foreign = subprocess.Popen(
        [sys.executable, "-c",
         "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
         "s.bind(('127.0.0.1',0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert foreign.stdout is not None
        port = int(foreign.stdout.readline())
        asked = CountingPortChecks()
        h.ctx.system = asked
        k = h.keeper("qwen-7b", port=port)

        async def body() -> None:
            k.launch()
            await h.until(lambda: h.state(k) is BackendState.DOWN)
            assert h.detail(k) == f"port {port} is held by pid {foreign.pid} (not started by gpumgr)"
            seen = asked.ports.count(port)
            await h.until(lambda: asked.ports.count(port) >= seen + 3)  # several re-checks, seen
            assert foreign.poll() is None  # never signalled
            assert not h.of(ev.ChildStarted)
            # said again at each look (a probe's reason may have replaced it), the same words
            said = {e.detail for _, e in h.of(ev.BackendDown)}  # type: ignore[attr-defined]
            assert said == {f"port {port} is held by pid {foreign.pid} (not started by gpumgr)"}
            assert h.detail(k) in said
            foreign.kill()
            foreign.wait()
            await h.until(lambda: h.state(k) is BackendState.UP)  # the port is free: it starts

        run(h, body)
    finally:
        foreign.kill()
        foreign.wait()


def test_an_engine_that_never_becomes_healthy_is_stopped_after_the_start_timeout(
    harness: Harness,
) -> None:
    h = harness
    h.ctx.timing = StartTiming(start_timeout_s=0.8, poll_s=0.05)
    k = h.keeper(
        "qwen-7b",
        policy=RestartPolicy(backoff_base_s=0.1, max_crashes=1),
        GPUMGR_SIM_LOAD_SECONDS="30",
    )

    async def body() -> None:
        k.launch()
        await h.until(lambda: h.state(k) is BackendState.FAILED)
        exits = [e for _, e in h.of(ev.ChildExited)]
        assert len(exits) == 2  # the first try and one restart, each cut at the timeout
        assert all("no /health 200 within 0.8s" in e.last_error for e in exits)  # type: ignore[attr-defined]
        assert not any(alive(e.pid) for e in exits)  # type: ignore[attr-defined]
        assert "no /health 200 within 0.8s" in h.detail(k)

    run(h, body)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_an_unresponsive_engine_is_restarted_on_request_and_counts_as_a_crash(
    harness: Harness,
) -> None:
    h = harness
    # It hangs 1 s after it serves: the keeper must see /health 200 before that, even loaded.
    k = h.keeper("qwen-7b", stop_timeout_s=0.5, GPUMGR_SIM_HANG_AFTER_S="1")

    async def body() -> None:
        k.launch()
        await h.until(lambda: h.state(k) is BackendState.UP)
        assert k.child is not None
        first = k.child.pid
        deadline = time.monotonic() + 30
        while True:  # hung: the port is open and nothing answers
            try:
                httpx2.get(f"http://127.0.0.1:{k.port}/health", timeout=0.5)
            except httpx2.TimeoutException:
                break
            assert time.monotonic() < deadline, "the engine never stopped answering"
            await asyncio.sleep(0.1)
        async with h.ctx.locks.lease(k.gpu_uuid, "test") as lease:
            assert await k.stop_unresponsive(lease, "no /health answer")
        await h.until(lambda: h.state(k) is BackendState.UP and k.child is not None and k.child.pid != first)
        assert not alive(first)
        assert h.restarts(k) == 1 and len(h.of(ev.Restarting)) == 1

    run(h, body)


def test_orphans_of_a_crashed_engine_are_killed_and_memory_freed_before_the_restart(
    harness: Harness,
) -> None:
    h = harness
    k = h.keeper("qwen-7b", stop_timeout_s=0.5, GPUMGR_SIM_GRANDCHILD="1")

    async def body() -> None:
        k.launch()
        await h.until(lambda: h.state(k) is BackendState.UP)
        assert k.child is not None
        first, pgid = k.child.pid, k.child.pgid
        orphans = [p.pid for p in psutil.process_iter() if _pgid(p.pid) == pgid and p.pid != first]
        assert orphans  # the grandchild holding the memory
        os.kill(first, signal.SIGKILL)  # only the API server dies
        await h.until(lambda: h.state(k) is BackendState.UP and k.child is not None and k.child.pid != first)
        assert not any(alive(p) for p in orphans)
        held = {a.pid for a in h.gpu.read().allocations}
        assert not held & {first, *orphans}

    run(h, body)
