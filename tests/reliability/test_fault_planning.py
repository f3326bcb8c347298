"""Two active engines that fit the card together must both start whatever order their weights
arrive in: here one provider's weights are already local (pulled before the daemon starts) and
the other's must be fetched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port
from reliability.rig import DEEPSEEK, QWEN_7B, WAIT_S, Rig, settings, vllm

pytestmark = pytest.mark.slow


def test_two_engines_that_fit_together_both_start_when_one_has_its_weights_first(
    tmp_path: Path,
) -> None:
    r = Rig(tmp_path, vllm("qwen-7b", free_port(), QWEN_7B)
            + vllm("deepseek", free_port(), DEEPSEEK), settings())
    try:
        pulled = subprocess.run(
            [sys.executable, "-m", "gpumgr.cli", "pull", "deepseek", "--config-dir",
             str(r.daemon.config_dir)], env={**r.daemon.env, "GPUMGR_SIMULATE": "1"},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr
        r.daemon.start()
        r.daemon.wait_up("deepseek", WAIT_S)
        r.daemon.wait_backend("qwen-7b", lambda b: b["state"] in ("up", "failed"), WAIT_S)
        assert r.daemon.backend("qwen-7b")["state"] == "up", r.daemon.backend("qwen-7b")["detail"]
    finally:
        r.close()
