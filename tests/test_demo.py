"""The README's main job: ``gpumgr demo`` brings the example's active model up and stops cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from tests.conftest import EXAMPLE_CONFIG


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
    assert "daemon exited with status 0" in out
    assert "Traceback" not in proc.stderr
    leftovers = [
        p for p in psutil.process_iter(["cmdline"])
        if "gpumgr.sim.vllm" in " ".join(p.info["cmdline"] or [])
        and str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
