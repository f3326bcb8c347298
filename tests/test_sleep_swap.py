"""Hot swap through vLLM sleep mode: the old engine sleeps instead of stopping, the new one
wakes instead of cold-starting (same pid, no second initialisation), and a daemon restart
adopts a sleeping engine asleep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import free_port
from test_swap import QWEN_7B, QWEN_14B, Box, provider

pytestmark = pytest.mark.slow


def sleepy(name: str, port: int, repo: str, status: str,
           env: dict[str, str] | None = None) -> str:
    """A provider of ``test_swap``'s shape with ``swap_mode: sleep``."""
    return provider(name, port, repo, status=status, max_model_len=4096, env=env).replace(
        "    max_num_seqs: 4\n", "    max_num_seqs: 4\n    swap_mode: sleep\n")


def test_7b_and_14b_swap_back_and_forth_by_sleeping_and_waking_the_same_processes(
    tmp_path: Path,
) -> None:
    b = Box(tmp_path, sleepy("qwen-7b", free_port(), QWEN_7B, "active")
            + sleepy("qwen-14b", free_port(), QWEN_14B, "standby"))
    try:
        d = b.daemon
        d.start()
        seven = d.wait_up("qwen-7b", 60)["pid"]
        first = b.cli("swap", "qwen-7b", "qwen-14b")
        assert first.returncode == 0, first.stderr
        assert "qwen-7b asleep (level 1)" in first.stdout and "sleep mode" in first.stdout
        fourteen = d.wait_up("qwen-14b", 30)["pid"]
        asleep = d.backend("qwen-7b")
        assert asleep["state"] == "sleeping" and not asleep["available"] and asleep["pid"] == seven
        assert "GiB of weights in host RAM" in asleep["detail"]
        held = {a.pid: a.used_mib for a in d.sim_gpu().read().allocations}
        assert held[seven] < 1024  # only its CUDA context stays on the card

        for old, new, pid in (("qwen-14b", "qwen-7b", seven), ("qwen-7b", "qwen-14b", fourteen),
                              ("qwen-14b", "qwen-7b", seven)):
            done = b.cli("swap", old, new)
            assert done.returncode == 0, done.stderr
            assert f"waking {new}" in done.stdout
            assert d.wait_up(new, 30)["pid"] == pid  # the same process: woken, not restarted
            assert d.backend(old)["state"] == "sleeping"
        inits = [e["pid"] for e in b.engine_events() if e["event"] == "init_start"]
        assert sorted(inits) == sorted([seven, fourteen])  # each engine initialised once
        desired = json.loads((d.tmp / "state" / "desired.json").read_text())["backends"]
        assert desired["qwen-14b"]["asleep"] is True and desired["qwen-7b"]["asleep"] is False

        assert d.proc is not None
        d.proc.kill()  # a daemon crash: both engines live on, one awake, one asleep
        d.proc.wait()
        d.start()
        assert d.wait_up("qwen-7b", 30)["pid"] == seven
        d.wait_backend("qwen-14b", lambda x: x["state"] == "sleeping" and x["pid"] == fourteen, 30)
        assert d.stop() == 0
    finally:
        b.daemon.cleanup()
