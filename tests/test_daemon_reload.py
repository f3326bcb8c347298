"""``systemctl reload`` (SIGHUP) never takes a model down, whatever the files say."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpumgr.sim.harness import (
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

        # `gpumgr status` still reaches the daemon although the file on disk is broken now
        env = {**os.environ, "GPUMGR_LISTEN": daemon.base_url.removeprefix("http://")}
        cli = subprocess.run(
            [sys.executable, "-m", "gpumgr.cli", "status", "--json", "--config-dir",
             str(daemon.config_dir)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert "configuration has 1 error(s)" in cli.stderr
        assert {b["name"]: b["pid"] for b in json.loads(cli.stdout)["backends"]}["qwen-7b"] == pid
        assert daemon.stop() == 0

        # and says so in one line, exit 1, when no daemon answers
        cli = subprocess.run(
            [sys.executable, "-m", "gpumgr.cli", "status", "--config-dir", str(daemon.config_dir)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 1
        assert cli.stderr.strip().splitlines()[-1].startswith("error: gpumgr daemon not reachable at")
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
