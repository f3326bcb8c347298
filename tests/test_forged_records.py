"""A forged ``children.json`` never makes the daemon signal a foreign process (real processes).

Everything a record holds but the spawn marker (pid, create time, command line, process group)
can be read from /proc for any process, so a forged record copies them exactly; only the
``GPUMGR_SPAWN_MARKER`` token in the engine's environment proves gpumgr started it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest

from gpumgr.sim.harness import (
    FAST_HEALTH_YAML,
    FAST_LIFECYCLE_YAML,
    DaemonHarness,
    alive,
    free_port,
    vllm_provider_yaml,
)
from gpumgr.supervisor.process import SPAWN_MARKER_ENV

pytestmark = pytest.mark.slow


def _forged(proc: psutil.Process, backend: str) -> dict[str, object]:
    return {"backend": backend, "pid": proc.pid, "pgid": os.getpgid(proc.pid),
            "create_time": proc.create_time(), "cmdline": proc.cmdline(), "port": None,
            "spawn_marker": "f" * 32}


def test_a_foreign_process_in_a_forged_record_survives_the_daemon_start_and_its_sigterm(
    tmp_path: Path,
) -> None:
    victim = subprocess.Popen(["sleep", "300"], start_new_session=True)
    daemon = DaemonHarness(tmp_path, "providers:\n" + vllm_provider_yaml("qwen", free_port()),
                           FAST_HEALTH_YAML.format(restart_after_s=60) + FAST_LIFECYCLE_YAML)
    try:
        p = psutil.Process(victim.pid)
        (tmp_path / "state").mkdir()
        # One record says it is the wanted engine (it would be adopted, then stopped at
        # shutdown), one a backend no longer configured (it would be stopped at once).
        (tmp_path / "state" / "children.json").write_text(json.dumps(
            {"version": 1, "children": [_forged(p, "qwen"), _forged(p, "ghost")]}))
        daemon.start()
        up = daemon.wait_up("qwen", 60)
        assert up["pid"] != victim.pid  # a real engine was started instead
        assert victim.poll() is None and alive(victim.pid)
        events = [e for e in daemon.events() if e.get("event") == "adopt.not_ours"]
        assert {e["backend"] for e in events} == {"qwen", "ghost"}
        assert all(e["pid"] == victim.pid and "spawn marker" in e["reason"] for e in events)
        # The engine gpumgr did start carries its marker, and its record holds the same one.
        record = next(c for c in json.loads((tmp_path / "state" / "children.json").read_text())
                      ["children"] if c["backend"] == "qwen")
        assert record["pid"] == up["pid"] and len(record["spawn_marker"]) == 32
        assert psutil.Process(up["pid"]).environ()[SPAWN_MARKER_ENV] == record["spawn_marker"]
        assert victim.pid not in daemon.recorded_pids()
        assert daemon.stop() == 0
        assert victim.poll() is None and alive(victim.pid)
        assert not alive(up["pid"])  # its own engine it did stop
    finally:
        daemon.cleanup()
        victim.kill()
        victim.wait()
