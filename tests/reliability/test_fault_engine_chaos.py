"""Engines that misbehave: one that hangs, one that ignores SIGTERM, one whose grandchild holds
the memory (and ignores SIGTERM too), one that dies while it starts.

One daemon for the module: a bystander engine that serves all along (its pid must never change,
its memory never moves) and four standby providers, each rigged through its ``env:`` with one of
the simulated engine's chaos switches, started one at a time over the control socket. What is
kept: the bystander; and for each rigged engine, that its processes (group included) and its
simulated GPU memory are gone once gpumgr is done with it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.helpers import free_port
from reliability.rig import (
    DEEPSEEK, QWEN_7B, WAIT_S, Rig, dead, group_gone, settings, vllm, wait_for, wait_new_pid_up,
)

pytestmark = pytest.mark.slow

BYSTANDER = "bystander"
UNRESPONSIVE_AFTER_S = 0.6
STOP_TIMEOUT_S = 1.0  # rig.LIFECYCLE_YAML


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, int]]:
    tmp = tmp_path_factory.mktemp("fault-chaos")
    providers = (
        vllm(BYSTANDER, free_port(), QWEN_7B)
        + vllm("hanger", free_port(), DEEPSEEK, status="standby",
               env={"GPUMGR_SIM_HANG_AFTER_S": "1.5"})
        + vllm("stubborn", free_port(), DEEPSEEK, status="standby",
               env={"GPUMGR_SIM_IGNORE_SIGTERM": "1"})
        + vllm("forker", free_port(), DEEPSEEK, status="standby",
               env={"GPUMGR_SIM_GRANDCHILD": "1", "GPUMGR_SIM_IGNORE_SIGTERM": "1"})
        + vllm("crasher", free_port(), DEEPSEEK, status="standby",
               env={"GPUMGR_SIM_OOM_AT_START": "1"})
    )
    r = Rig(tmp, providers, settings(restart_unresponsive_after_s=UNRESPONSIVE_AFTER_S))
    try:
        r.daemon.start()
        pid = int(r.daemon.wait_up(BYSTANDER, WAIT_S)["pid"])
        yield r, pid
        # the bystander was never touched by anything the others did
        assert r.pid_of(BYSTANDER) == pid
        assert [e for e in r.engine_events() if e["pid"] == pid and e["event"] == "exit"] == []
        assert set(r.allocations()) == {pid}
        assert r.daemon.stop() == 0
        assert r.allocations() == {}
    finally:
        r.close()


def _engine_pids(r: Rig, name: str) -> set[int]:
    port = int(r.daemon.backend(name)["port"])
    return {e["pid"] for e in r.engine_events() if e["port"] == port}


def _all_gone(r: Rig, pids: set[int]) -> bool:
    held = set(r.allocations())
    return all(dead(p) and group_gone(p) for p in pids) and not (held & pids)


def test_a_hung_engine_is_restarted_and_a_stop_ends_it_with_nothing_left(
    rig: tuple[Rig, int],
) -> None:
    r, _ = rig
    status, lines = r.control("start", {"name": "hanger"})
    assert status == 200 and lines[-1]["ok"], lines
    first = r.pid_of("hanger")
    # it stops answering 1.5 s after it serves (time enough to be seen up first, even on a loaded
    # machine): suspect/down, then restarted with a new pid
    r.daemon.wait_backend("hanger", lambda b: not b["available"] or b["suspect"], WAIT_S,
                          "the hang noticed")  # fmt: skip
    wait_new_pid_up(r, "hanger", first)
    wait_for(lambda: _all_gone(r, {first}), WAIT_S, "the hung engine and its memory gone")
    assert any(e.get("event") == "keeper.unresponsive" and e.get("pid") == first
               for e in r.daemon.events())  # fmt: skip
    status, lines = r.control("stop", {"name": "hanger"})
    assert status == 200 and lines[-1]["ok"], lines
    assert r.daemon.backend("hanger")["state"] == "stopped"
    pids = _engine_pids(r, "hanger")
    assert len(pids) >= 2
    wait_for(lambda: _all_gone(r, pids), 10, "every hanger engine and its memory gone")


def test_an_engine_that_ignores_sigterm_is_killed_after_the_stop_timeout(
    rig: tuple[Rig, int],
) -> None:
    r, _ = rig
    status, lines = r.control("start", {"name": "stubborn"})
    assert status == 200 and lines[-1]["ok"], lines
    pid = r.pid_of("stubborn")
    t0 = time.monotonic()
    status, lines = r.control("stop", {"name": "stubborn"})
    took = time.monotonic() - t0
    assert status == 200 and lines[-1]["ok"], lines
    assert any("stubborn killed in" in x.get("message", "") for x in lines), lines
    assert STOP_TIMEOUT_S <= took < STOP_TIMEOUT_S + 15
    assert dead(pid) and group_gone(pid)
    assert pid not in r.allocations()  # the stop waited for the memory
    assert r.daemon.backend("stubborn")["state"] == "stopped"


def test_a_grandchild_holding_memory_is_killed_with_its_group_on_a_crash_and_on_a_stop(
    rig: tuple[Rig, int],
) -> None:
    r, bystander = rig
    status, lines = r.control("start", {"name": "forker"})
    assert status == 200 and lines[-1]["ok"], lines
    pid = r.pid_of("forker")
    held = set(r.allocations()) - {bystander}
    grandchild = next(iter(held - {pid}))  # the memory is held by the grandchild, as EngineCore does
    assert os.getpgid(grandchild) == pid
    os.kill(pid, signal.SIGKILL)  # only the API server dies; its grandchild lives on
    new = wait_new_pid_up(r, "forker", pid)
    assert dead(grandchild) and group_gone(pid)
    assert grandchild not in r.allocations()
    new_grandchild = next(iter(set(r.allocations()) - {bystander, new}))
    status, lines = r.control("stop", {"name": "forker"})  # both ignore SIGTERM
    assert status == 200 and lines[-1]["ok"], lines
    assert dead(new) and dead(new_grandchild) and group_gone(new)
    assert set(r.allocations()) == {bystander}


def test_an_engine_that_dies_while_starting_fails_the_start_and_leaves_nothing(
    rig: tuple[Rig, int],
) -> None:
    r, bystander = rig
    before = _engine_pids(r, "crasher")
    status, lines = r.control("start", {"name": "crasher"})
    assert status == 200
    done = lines[-1]
    assert done["ok"] is False and "crasher failed to start" in done["error"], done
    assert any("CUDA out of memory" in x for x in done["log_tail"]), done
    crashed = _engine_pids(r, "crasher") - before
    assert crashed, "no engine was started"
    wait_for(lambda: _all_gone(r, crashed), 10, "the crashed engine and its memory gone")
    b = r.daemon.backend("crasher")
    assert b["state"] in ("stopped", "failed") and not b["available"]
    assert set(r.allocations()) == {bystander}
    # a start that failed is not left wanted: a daemon restart would not try it again
    desired = (r.daemon.tmp / "state" / "desired.json").read_text()
    assert '"crasher"' not in desired
