"""A woken engine is announced with its own last measured wake, not its last cold start, and is
``starting`` for the whole wake (from the ``/wake_up`` call on): the router's ``GPUMGR_HOLD_S``
waits for a ``starting`` backend only when its ``eta_s`` is short, so a wake of seconds
announced with a load of minutes, or published only after ``/wake_up`` returned, would never be
waited for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import free_port
from test_sleep_swap import sleepy
from test_swap import QWEN_7B, QWEN_14B, Box

pytestmark = pytest.mark.slow

SLOW_LOAD_QUICK_WAKE = {"GPUMGR_SIM_LOAD_SECONDS": "3", "GPUMGR_SIM_WAKE_SECONDS": "1"}


def _sleepy(name: str, port: int, repo: str, status: str) -> str:
    return sleepy(name, port, repo, status, env=SLOW_LOAD_QUICK_WAKE)


def test_a_wake_is_announced_with_the_last_measured_wake_not_the_cold_start(
    tmp_path: Path,
) -> None:
    b = Box(tmp_path, _sleepy("qwen-7b", free_port(), QWEN_7B, "active")
            + _sleepy("qwen-14b", free_port(), QWEN_14B, "standby"))
    try:
        d = b.daemon
        d.start()
        d.wait_up("qwen-7b", 60)
        for old, new in (("qwen-7b", "qwen-14b"), ("qwen-14b", "qwen-7b")):
            done = b.cli("swap", old, new)
            assert done.returncode == 0, done.stderr
        times = json.loads((d.tmp / "state" / "startup.json").read_text())
        assert 3.0 <= times["qwen-7b"] and 1.0 <= times["qwen-7b:wake"]  # a wake: its own time
        assert times["qwen-7b:wake"] < times["qwen-7b"]
        assert "qwen-14b:wake" not in times  # the 14B was cold-started, never woken yet
        assert b.cli("swap", "qwen-7b", "qwen-14b").returncode == 0
        again = b.popen("swap", "qwen-14b", "qwen-7b")
        waking = d.wait_backend("qwen-7b", lambda x: x["state"] == "starting", 30)
        assert waking["detail"].endswith(f"of ~{times['qwen-7b:wake']:.0f} s")
        assert waking["eta_s"] is not None and waking["eta_s"] <= times["qwen-7b:wake"]
        assert again.wait(timeout=60) == 0
        assert d.wait_up("qwen-7b", 30)["eta_s"] is None
    finally:
        b.daemon.cleanup()
