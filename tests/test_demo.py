"""The README's main job: ``gpumgr demo`` brings the example's active model up and stops cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import EXAMPLE_CONFIG

pytestmark = pytest.mark.slow  # the demo runs a daemon, engines and a simulated Ollama


def test_demo_brings_qwen_7b_up_answers_a_request_and_leaves_nothing_running(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gpumgr.cli", "demo", "--config-dir", str(EXAMPLE_CONFIG),
         "--workdir", str(tmp_path / "demo"), "--load-seconds", "0.3", "--timeout", "60"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "qwen-7b: starting -> up" in out
    assert "request to qwen-coder-vllm answered" in out
    assert "swapped qwen-7b → qwen-14b in" in out  # the restart swap
    assert "qwen-14b asleep (level 1)" in out and "swapped qwen-14b → qwen-7b (sleep mode)" in out
    assert "qwen-14b awake and answering" in out  # woken, not cold-started
    assert "daemon exited with status 0" in out
    assert "Traceback" not in proc.stderr
    leftovers = [
        p for p in psutil.process_iter(["cmdline"])
        if "gpumgr.sim.vllm" in " ".join(p.info["cmdline"] or [])
        and str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []


def test_ctrl_c_during_the_demo_stops_everything_and_exits_0_without_a_traceback(
    tmp_path: Path,
) -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "gpumgr.cli", "demo", "--config-dir", str(EXAMPLE_CONFIG),
         "--workdir", str(tmp_path / "demo"), "--load-seconds", "0.3", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "qwen-7b: starting -> up" in line or "gpumgr swap" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err and "Traceback" not in out
    time.sleep(0.5)
    leftovers = [
        p for p in psutil.process_iter(["cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
