"""Process control on real (tiny Python) children: sessions, logs, exit detection, group stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gpumgr.supervisor import process
from gpumgr.supervisor.logs import tail_lines
from tests.helpers import alive, wait_for_async

STUBBORN = r"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
kid = subprocess.Popen([sys.executable, "-c",
    "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
print("grandchild", kid.pid, flush=True)
time.sleep(60)
"""


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_child_runs_in_its_own_session_and_appends_to_its_log(tmp_path: Path) -> None:
    log_file = tmp_path / "qwen-7b.log"
    log_file.write_text("line from an earlier run\n")
    code = "import os; print('sid', os.getsid(0), 'notify', os.environ.get('NOTIFY_SOCKET'))"

    async def main() -> None:
        env = {**os.environ, "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1"}
        child = await process.spawn("qwen-7b", [sys.executable, "-c", code], env, log_file)
        try:
            assert child.pgid == child.pid
            assert await asyncio.wait_for(child.wait(), 10) == 0
        finally:
            _kill_group(child.pgid)
        assert child.log_offset == len("line from an earlier run\n")
        lines = tail_lines(log_file, 5)
        assert lines == ["line from an earlier run", f"sid {child.pid} notify None"]
        assert tail_lines(log_file, 5, since_offset=child.log_offset) == lines[1:]

    asyncio.run(main())


def test_sigkill_of_the_child_is_noticed_at_once(tmp_path: Path) -> None:
    """Measured ~2 ms (10 ms at worst with three CPU burners); 1 s leaves a loaded CI box slack
    while anything that polled for the exit would still show."""
    async def main() -> None:
        argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        child = await process.spawn("b", argv, dict(os.environ), tmp_path / "b.log")
        try:
            os.kill(child.pid, signal.SIGKILL)
            t0 = time.monotonic()
            rc = await asyncio.wait_for(child.wait(), 5)
            assert time.monotonic() - t0 < 1.0
            assert rc == -signal.SIGKILL
        finally:
            _kill_group(child.pgid)

    asyncio.run(main())


def test_stop_kills_a_child_that_ignores_sigterm_and_its_grandchild(tmp_path: Path) -> None:
    log_file = tmp_path / "stubborn.log"

    async def main() -> None:
        argv = [sys.executable, "-c", STUBBORN]
        child = await process.spawn("stubborn", argv, dict(os.environ), log_file)
        try:
            await wait_for_async(lambda: any("grandchild" in ln for ln in tail_lines(log_file)))
            grandchild = int(tail_lines(log_file)[-1].split()[1])
            asked: list[frozenset[int]] = []

            async def released(pids: frozenset[int]) -> bool:
                asked.append(pids)
                return not any(alive(p) for p in pids)

            outcome = await process.stop(
                child, term_timeout_s=0.5, memory_released=released, memory_timeout_s=5
            )
            assert outcome.killed and outcome.group_gone and outcome.memory_released
            assert 0.5 <= outcome.stop_s < 4  # the 0.5 s SIGTERM timeout, then at once
            assert not alive(child.pid) and not alive(grandchild)
            assert {child.pid, grandchild} <= asked[0]
        finally:
            _kill_group(child.pgid)

    asyncio.run(main())


def test_stop_of_a_polite_child_needs_no_sigkill(tmp_path: Path) -> None:
    async def main() -> None:
        argv = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
        child = await process.spawn("polite", argv, dict(os.environ), tmp_path / "p.log")
        try:
            await wait_for_async(lambda: tail_lines(tmp_path / "p.log") == ["up"])
            outcome = await process.stop(child, term_timeout_s=5)
            assert not outcome.killed and outcome.group_gone
            assert outcome.stop_s < 2.5  # not the 5 s SIGTERM timeout (measured: milliseconds)
            assert child.returncode == -signal.SIGTERM
        finally:
            _kill_group(child.pgid)

    asyncio.run(main())


def test_stop_of_a_hung_sigstopped_child_needs_no_sigkill(tmp_path: Path) -> None:
    """A hung engine (SIGSTOPped group) still gets its SIGTERM: the stop continues it."""

    async def main() -> None:
        argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        child = await process.spawn("hung", argv, dict(os.environ), tmp_path / "hung.log")
        try:
            os.killpg(child.pgid, signal.SIGSTOP)
            outcome = await process.stop(child, term_timeout_s=5)
            assert not outcome.killed and outcome.group_gone
            assert outcome.stop_s < 2.5  # not the 5 s SIGTERM timeout (measured: milliseconds)
        finally:
            _kill_group(child.pgid)

    asyncio.run(main())


def test_an_adopted_process_exit_is_noticed_through_its_pidfd(tmp_path: Path) -> None:
    """The process is not our child (its parent exited), as after a daemon restart."""
    launcher = (
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)'], start_new_session=True, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)"
    )
    out = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True)
    pid = int(out.stdout.strip())
    proc = psutil.Process(pid)

    async def main() -> None:
        child = process.adopt("orphan", pid, pid, proc.create_time(), proc.cmdline())
        assert not child.exited
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert await asyncio.wait_for(child.wait(), 5) is None
        assert time.monotonic() - t0 < 1.0

    try:
        asyncio.run(main())
    finally:
        _kill_group(pid)


@pytest.mark.parametrize("name", ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"])
def test_child_environment_drops_systemd_notification_variables(name: str) -> None:
    env = process.child_environment({name: "x", "CUDA_VISIBLE_DEVICES": "GPU-1"})
    assert env == {"CUDA_VISIBLE_DEVICES": "GPU-1"}
