"""End-to-end: an engine put to sleep by someone else (vLLM's ``/sleep`` needs no API key) is
published ``sleeping``, not available, with the reason; it stays so until an operator wakes it."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from gpumgr.sim.harness import (
    FAST_HEALTH_YAML,
    FAST_LIFECYCLE_YAML,
    DaemonHarness,
    assert_clean_daemon_log,
    free_port,
    vllm_provider_yaml,
)

pytestmark = pytest.mark.slow

ENGINE = "qwen-7b"


def test_a_foreign_sleep_is_published_sleeping_and_only_an_operator_wakes_it(tmp_path: Path) -> None:
    port = free_port()
    providers = "providers:" + vllm_provider_yaml(ENGINE, port) + "    enable_sleep_mode: true\n"
    harness = DaemonHarness(tmp_path, providers,
                            FAST_HEALTH_YAML.format(restart_after_s=600) + FAST_LIFECYCLE_YAML)
    try:
        harness.start()
        harness.wait_up(ENGINE)
        assert httpx2.post(f"http://127.0.0.1:{port}/sleep?level=1", timeout=10).status_code == 200
        b = harness.wait_backend(ENGINE, lambda b: b["state"] == "sleeping", 10, "sleeping")
        assert b["available"] is False and "gpumgr did not put it to sleep" in b["detail"]
        # woken behind gpumgr's back: still published sleeping (only an operator wakes it)
        assert httpx2.post(f"http://127.0.0.1:{port}/wake_up", timeout=10).status_code == 200
        woken = harness.cli("wake", ENGINE)
        assert woken.returncode == 0, woken.stderr
        harness.wait_up(ENGINE, timeout_s=20)
        assert harness.stop() == 0
        assert_clean_daemon_log(harness.log_text())
    finally:
        harness.cleanup()
