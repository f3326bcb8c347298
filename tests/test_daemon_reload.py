"""``systemctl reload`` (SIGHUP) never takes a model down, whatever the files say."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from daemon_harness import (
    FAST_HEALTH_YAML,
    FAST_LIFECYCLE_YAML,
    DaemonHarness,
    free_port,
    vllm_provider_yaml,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_sighup_with_a_broken_registry_keeps_the_daemon_and_its_engine_and_names_the_error(
    tmp_path: Path,
) -> None:
    providers = "providers:\n" + vllm_provider_yaml("qwen-7b", free_port())
    settings = FAST_HEALTH_YAML.format(restart_after_s=60) + FAST_LIFECYCLE_YAML
    daemon = DaemonHarness(tmp_path, providers, settings)
    try:
        daemon.start()
        pid = daemon.wait_up("qwen-7b")["pid"]
        (daemon.config_dir / "providers.yaml").write_text("providers:\n  qwen-7b: [unclosed\n")
        assert daemon.proc is not None
        os.kill(daemon.proc.pid, signal.SIGHUP)
        wait_for(lambda: "config.reload_invalid" in daemon.log_text(), 30, "the reload verdict")
        assert "providers.yaml:3:1: YAML syntax error" in daemon.log_text()
        doc = daemon.status()
        assert daemon.backend("qwen-7b", doc)["pid"] == pid and daemon.backend("qwen-7b", doc)["available"]
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()


def test_sigterm_during_a_slow_download_exits_at_once_instead_of_waiting_for_it(tmp_path: Path) -> None:
    """systemd's stop must not hang for the rest of a 9 GB download."""
    import time

    from gpumgr.sim.catalog import materialise_catalog
    from gpumgr.sim.hub import HubSwitches, start_sim_hub

    repos = materialise_catalog(tmp_path / "repos", ["Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"])
    hub = start_sim_hub(repos, switches=HubSwitches(slow_bytes_per_s=50))
    try:
        settings = (FAST_HEALTH_YAML.format(restart_after_s=60) + FAST_LIFECYCLE_YAML).replace(
            "simulate:\n", f"simulate:\n  hub_endpoint: {hub.url}\n"
        )
        providers = "providers:\n" + vllm_provider_yaml("qwen-7b", free_port())
        daemon = DaemonHarness(tmp_path / "d", providers, settings)
        try:
            daemon.start()
            daemon.wait_backend("qwen-7b", lambda b: b["state"] == "downloading", 30)
            t0 = time.monotonic()
            assert daemon.stop(timeout_s=20) == 0
            assert time.monotonic() - t0 < 10
        finally:
            daemon.cleanup()
    finally:
        hub.stop()
