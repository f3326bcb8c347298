"""Scheduled probes against real processes: hung backends go down in bounded time, recover, and
supervisor events are published at once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import structlog

from gpumgr.backend_state import BackendState as S
from gpumgr.config.registry import HealthChecks, Provider
from gpumgr.config.settings import HealthSettings
from gpumgr.engines.probe_result import ProbeResult
from gpumgr.health.machine import BackendHealth, Transition
from gpumgr.health.scheduler import HealthScheduler, ProbeTiming, timing_for
from gpumgr.sim.gpu import STATE_ENV, SimGpuSpec, SimGpuState, sim_uuid
from gpumgr.sim.ollama_process import SimOllamaProcess, running_sim_ollama
from tests.helpers import wait_for_async

# Fast enough that a test takes seconds, patient enough (a quarter-second answer) that a loaded
# 2-core CI box does not time out a healthy sim.
FAST = HealthSettings(interval_s=0.3, timeout_s=0.25, retry_attempts=3, jitter_s=0.02)


@pytest.fixture
def ollama(tmp_path: Path) -> Iterator[SimOllamaProcess]:
    gpu = SimGpuState(tmp_path / "gpu.json")
    gpu.ensure([SimGpuSpec(0, sim_uuid(0))])
    with running_sim_ollama(["llama3.2"], env={STATE_ENV: str(gpu.path)}) as sim:
        yield sim


def ollama_provider(base_url: str) -> Provider:
    return Provider(name="ollama", type="ollama", base_url=base_url, models=["llama3.2"])


async def wait_state(sched: HealthScheduler, name: str, state: S, timeout_s: float) -> float:
    """Seconds until ``name`` is in ``state`` (deadline-bounded polling of the owner's view)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if sched.health(name).state is state:
            return time.monotonic() - t0
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} not {state} after {timeout_s} s: {sched.health(name)}")


def test_yaml_settings_win_over_the_registry_block_then_defaults() -> None:
    ollama = Provider(name="o", type="ollama", base_url="http://127.0.0.1:11434")
    cloud = Provider(name="c", type="ollama_cloud", base_url="https://ollama.com")
    registry = HealthChecks(interval_seconds=5, timeout_seconds=2, retry_attempts=4)
    assert timing_for(ollama, HealthSettings(), HealthChecks()) == ProbeTiming(2.0, 1.0, 3, 0.1)
    assert timing_for(ollama, HealthSettings(), registry) == ProbeTiming(5, 2, 4, 0.1)
    assert timing_for(ollama, HealthSettings(interval_s=3, retry_attempts=2), registry) == ProbeTiming(
        3, 2, 2, 0.1
    )
    assert timing_for(cloud, HealthSettings(), registry).interval_s == 60.0


def test_the_engines_gpumgr_runs_are_probed_fast_unless_gpumgr_yaml_says_otherwise() -> None:
    """A hung engine must be suspect (and skipped by the router) within about a second: the
    registry's 2 s interval is for the other backends; gpumgr.yaml's ``health:`` still wins."""
    vllm = Provider(name="q", type="vllm", base_url="http://127.0.0.1:8001")
    registry = HealthChecks(interval_seconds=2, timeout_seconds=1, retry_attempts=3)
    fast = timing_for(vllm, HealthSettings(), registry)
    assert (fast.interval_s, fast.timeout_s, fast.retry_attempts) == (0.5, 0.5, 3)
    assert fast.interval_s + fast.timeout_s + fast.jitter_s <= 1.5
    assert timing_for(vllm, HealthSettings(interval_s=3, timeout_s=2), registry).interval_s == 3
    standby = Provider(name="s", type="vllm", base_url="http://127.0.0.1:8002", status="disabled")
    assert timing_for(standby, HealthSettings(), registry).interval_s == 2


def test_sigstopped_backend_is_down_within_interval_times_attempts_plus_timeout_and_recovers(
    ollama: SimOllamaProcess,
) -> None:
    transitions: list[Transition] = []

    async def run() -> tuple[float, float]:
        async with httpx2.AsyncClient() as client:
            sched = HealthScheduler(
                {"ollama": ollama_provider(ollama.base_url)}, FAST, HealthChecks(), client,
                on_transition=transitions.append,
            )
            sched.start()
            try:
                await wait_state(sched, "ollama", S.UP, 10.0)
                os.kill(ollama.pid, signal.SIGSTOP)
                try:
                    to_down = await wait_state(sched, "ollama", S.DOWN, 10.0)
                finally:
                    os.kill(ollama.pid, signal.SIGCONT)
                to_up = await wait_state(sched, "ollama", S.UP, 10.0)
            finally:
                await sched.stop()
            return to_down, to_up

    to_down, to_up = asyncio.run(run())
    bound_s = FAST.interval_s * FAST.retry_attempts + FAST.timeout_s + FAST.jitter_s
    assert to_down <= 3 * bound_s, to_down  # 3×: slack for a loaded 2-core CI box
    assert to_up <= 3 * (FAST.interval_s + FAST.timeout_s + FAST.jitter_s), to_up
    assert [(t.old, t.new) for t in transitions] == [(S.UNKNOWN, S.UP), (S.UP, S.DOWN), (S.DOWN, S.UP)]
    assert "timeout" in transitions[1].reason and "3 consecutive failures" in transitions[1].reason


def test_starting_backend_is_polled_fast_and_up_as_soon_as_it_answers(
    ollama: SimOllamaProcess,
) -> None:
    """The normal interval is 30 s; a starting backend is looked at every 0.25 s."""
    ollama.set_mode("down")  # still loading: answers 503
    slow = HealthSettings(interval_s=30, timeout_s=0.5, jitter_s=0)

    polls: list[object] = []

    async def run() -> float:
        async with httpx2.AsyncClient() as client:
            sched = HealthScheduler(
                {"ollama": ollama_provider(ollama.base_url)}, slow, HealthChecks(), client,
                on_transition=lambda t: None, initial_states={"ollama": S.STOPPED},
                on_probe=lambda *a: polls.append(a),
            )
            sched.start()
            try:
                sched.lifecycle("ollama", S.STARTING, "spawned pid 1234")
                # several fast polls see 503 (counted, not slept for): still starting, not down
                await wait_for_async(lambda: len(polls) >= 3, 10, "three fast polls")
                assert sched.health("ollama").state is S.STARTING
                ollama.set_mode("ok")
                return await wait_state(sched, "ollama", S.UP, 10.0)
            finally:
                await sched.stop()

    # one fast poll (0.25 s) plus an answer, with slack for a loaded box: far below the 30 s
    assert asyncio.run(run()) < 3 * (0.25 + 0.3)


def test_process_exit_is_published_at_once_and_logged_once(ollama: SimOllamaProcess) -> None:
    published: list[Transition] = []

    async def publish(t: Transition) -> None:  # the publisher may be async
        published.append(t)

    async def run() -> Transition | None:
        async with httpx2.AsyncClient() as client:
            sched = HealthScheduler(
                {"ollama": ollama_provider(ollama.base_url)}, FAST, HealthChecks(), client,
                on_transition=publish, clock=lambda: 1234.5,
            )
            sched.start()
            try:
                await wait_state(sched, "ollama", S.UP, 10.0)
                tr = sched.process_exited("ollama", restarting=True, reason="killed by SIGKILL")
                assert sched.health("ollama").state is S.RESTARTING  # no probe involved
                return tr
            finally:
                await sched.stop()

    with structlog.testing.capture_logs() as logs:
        tr = asyncio.run(run())
    assert tr == Transition("ollama", S.UP, S.RESTARTING, "killed by SIGKILL", 1234.5)
    assert published[-1] == tr
    lines = [e for e in logs if e.get("event") == "backend.state" and e["new"] == "restarting"]
    assert lines == [
        {"event": "backend.state", "log_level": "info", "backend": "ollama", "old": "up",
         "new": "restarting", "reason": "killed by SIGKILL"}
    ]


def test_disabled_and_template_providers_are_listed_fixed_and_never_probed() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    refused_url = f"http://127.0.0.1:{refused.getsockname()[1]}"
    refused.close()  # nothing listens there: its probes fail at once, and they are counted
    providers = {
        "old": Provider(name="old", type="vllm", base_url=url, status="disabled"),
        "tmpl": Provider(name="tmpl", type="ollama", base_url=url, status="template"),
        "gpt": Provider(name="gpt", type="openai", base_url=url),
        "probed": Provider(name="probed", type="ollama", base_url=refused_url),
    }
    seen: list[tuple[str, ProbeResult, BackendHealth]] = []

    async def run() -> dict[str, BackendHealth]:
        async with httpx2.AsyncClient() as client:
            sched = HealthScheduler(
                providers, FAST, HealthChecks(), client,
                on_transition=lambda t: None, on_probe=lambda *a: seen.append(a),
            )
            sched.start()
            try:  # the scheduler ran several rounds: the others were passed over, not missed
                await wait_for_async(lambda: sum(s[0] == "probed" for s in seen) >= 3, 30,
                                     "three probes of the one probed provider")
            finally:
                await sched.stop()
            return sched.healths()

    try:
        healths = asyncio.run(run())
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()
    assert {n: (h.state, h.reason) for n, h in healths.items() if n != "probed"} == {
        "old": (S.DISABLED, "status: disabled"),
        "tmpl": (S.DISABLED, "status: template"),
        "gpt": (S.UNKNOWN, "not probed (type openai)"),
    }
    assert [s[0] for s in seen if s[0] != "probed"] == []


def test_supervisor_events_drive_states_without_probes() -> None:
    from gpumgr.health.supervisor_events import apply_supervisor_event
    from gpumgr.supervisor.events import (
        BackendFailed, ChildExited, ChildStarted, ChildStopped, ChildStopping, Draining,
        Restarting,
    )

    p = Provider(name="qwen-7b", type="vllm", base_url="http://127.0.0.1:8001")
    published: list[Transition] = []

    async def run() -> None:
        async with httpx2.AsyncClient() as client:
            sched = HealthScheduler({"qwen-7b": p}, FAST, HealthChecks(), client,
                                    on_transition=published.append,
                                    initial_states={"qwen-7b": S.STOPPED})
            for ev in (
                ChildStarted("qwen-7b", 4242, 8001, 0.62),
                ChildExited("qwen-7b", 4242, -9, False, ""),
                Restarting("qwen-7b", 2.0, 1),
                ChildStarted("qwen-7b", 4243, 8001, 0.62),
                ChildExited("qwen-7b", 4243, 1, True, "CUDA out of memory"),
                BackendFailed("qwen-7b", "crash loop: CUDA out of memory"),
                ChildStopping("qwen-7b", 4243),
                ChildStopped("qwen-7b", 4243, killed=False, memory_released=True),
                ChildStopped("qwen-7b", 4243, killed=False, memory_released=True),  # repeat: no-op
                Draining("qwen-7b", 4243),  # impossible from stopped: logged, dropped
            ):
                apply_supervisor_event(sched, ev)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(run())
    assert [(t.new, t.reason) for t in published] == [
        (S.STARTING, "spawned pid 4242"),
        (S.DOWN, "process 4242 killed by signal 9"),
        (S.RESTARTING, "restart #1 in 2 s"),
        (S.STARTING, "spawned pid 4243"),
        (S.DOWN, "process 4243 exit 1: out of memory: CUDA out of memory"),
        (S.FAILED, "crash loop: CUDA out of memory"),
        (S.STOPPING, "stopping pid 4243"),
        (S.STOPPED, "pid 4243 stopped"),
    ]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["backend.illegal_transition"]


def test_child_ready_is_confirmed_by_a_probe_before_up(ollama: SimOllamaProcess) -> None:
    from gpumgr.health.supervisor_events import apply_supervisor_event
    from gpumgr.supervisor.events import ChildReady, ChildStarted

    # One probe, no scheduled retries (the scheduler is not started): its timeout is a patient
    # one, so that a loaded CI box cannot turn "confirmed by a probe" into a timeout.
    patient = HealthSettings(interval_s=5.0, timeout_s=5.0, retry_attempts=3, jitter_s=0.0)

    async def run() -> S:
        async with httpx2.AsyncClient() as client:
            sched = HealthScheduler({"ollama": ollama_provider(ollama.base_url)}, patient,
                                    HealthChecks(), client, on_transition=lambda t: None,
                                    initial_states={"ollama": S.STOPPED})  # no jobs: not started
            apply_supervisor_event(sched, ChildStarted("ollama", ollama.pid, ollama.port, None))
            apply_supervisor_event(sched, ChildReady("ollama", ollama.pid, 0.3))
            assert sched.health("ollama").state is S.STARTING  # not up on the supervisor's word
            await wait_state(sched, "ollama", S.UP, 15.0)
            await sched.stop()
            return sched.health("ollama").state

    assert asyncio.run(run()) is S.UP
