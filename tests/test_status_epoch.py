"""A daemon restart starts ``seq`` again under a new ``epoch``; readers can tell (real daemons)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumgr.sim.harness import FAST_HEALTH_YAML, FAST_LIFECYCLE_YAML, DaemonHarness, free_port
from gpumgr.sse import parse_event_id
from test_cli_watch import LineReader
from test_litellm_follower_fuzz import FollowerThread

pytestmark = pytest.mark.slow


def test_a_restarted_daemon_has_a_new_epoch_and_the_follower_takes_its_lower_seq(
    tmp_path: Path,
) -> None:
    dead = free_port()

    def providers(*names: str) -> str:
        return "providers:\n" + "".join(
            f"  {n}:\n    type: ollama\n    base_url: http://127.0.0.1:{dead}\n"
            f"    status: active\n    models: [m-{n}]\n" for n in names)

    daemon = DaemonHarness(tmp_path, providers("o1"),
                           FAST_HEALTH_YAML.format(restart_after_s=60) + FAST_LIFECYCLE_YAML)
    follower: FollowerThread | None = None
    try:
        daemon.start()
        first = daemon.status()
        assert len(first["epoch"]) == 12
        sse = daemon.sse()
        follower = FollowerThread(daemon.base_url + "/v1/status")
        follower.wait(lambda f: f.status is not None and f.status.epoch == first["epoch"]
                      and f.streaming, "the first daemon's document")
        for i in range(6):  # more changes in the first life (reloads), so its seq is higher
            names = ("o1", "o2") if i % 2 == 0 else ("o1",)
            (daemon.config_dir / "providers.yaml").write_text(providers(*names))
            assert daemon.cli("reload").returncode == 0
        old = daemon.status()
        follower.wait(lambda f: f.status is not None and f.status.seq is not None
                      and f.status.seq > first["seq"] + 3, "the first daemon's changes")
        assert follower.follower.status is not None and follower.follower.status.seq is not None
        old_followed = follower.follower.status.seq
        assert daemon.stop() == 0
        sse.join()
        url = daemon.base_url
        (daemon.config_dir / "providers.yaml").write_text(providers("o1"))
        daemon.start()
        if daemon.base_url != url:  # a new port: point a new follower at it
            follower.stop()
            follower = FollowerThread(daemon.base_url + "/v1/status")
        new = daemon.status()
        assert new["epoch"] != old["epoch"]
        assert new["seq"] < old["seq"]
        follower.wait(lambda f: f.status is not None and f.status.epoch == new["epoch"],
                      "the new daemon's epoch", timeout_s=15)
        assert follower.follower.status is not None
        assert follower.follower.status.seq is not None
        assert follower.follower.status.seq < old_followed  # taken, not refused as a replay
        # Every SSE id of the first life reads as epoch:seq.
        ids = [parse_event_id(i) for i in sse.ids]
        assert ids and all(i is not None and i.epoch == first["epoch"] for i in ids)
    finally:
        if follower is not None:
            follower.stop()
        daemon.cleanup()


def test_status_watch_redraws_on_a_pushed_change(tmp_path: Path) -> None:
    """``gpumgr status --watch`` reads the stream through ``gpumgr.sse`` and redraws the table
    when the daemon pushes a change (here: a backend added by a reload)."""
    import os
    import signal
    import subprocess
    import sys

    dead = free_port()

    def providers(*names: str) -> str:
        return "providers:\n" + "".join(
            f"  {n}:\n    type: ollama\n    base_url: http://127.0.0.1:{dead}\n"
            f"    status: active\n    models: [m-{n}]\n" for n in names)

    daemon = DaemonHarness(tmp_path, providers("first-backend"),
                           FAST_HEALTH_YAML.format(restart_after_s=60) + FAST_LIFECYCLE_YAML)
    watch: subprocess.Popen[str] | None = None
    try:
        daemon.start()
        env = {**daemon.env, "GPUMGR_LISTEN": daemon.base_url.removeprefix("http://"),
               "COLUMNS": "200"}
        watch = subprocess.Popen(
            [sys.executable, "-m", "gpumgr.cli", "status", "--watch", "--config-dir",
             str(daemon.config_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        # the first table drawn (a CLI may take seconds to start on a loaded machine), then
        # the change: so what shows the added backend is a redraw, not the first table
        out = LineReader(watch)
        out.until(lambda line: "first-backend" in line, timeout_s=60)
        assert not [line for line in out.seen if "added-backend" in line]
        (daemon.config_dir / "providers.yaml").write_text(
            providers("first-backend", "added-backend"))
        assert daemon.cli("reload").returncode == 0
        out.until(lambda line: "added-backend" in line, timeout_s=30)
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=15)
        assert watch.stderr is not None
        err = watch.stderr.read()
        assert "Traceback" not in err, err
    finally:
        if watch is not None and watch.poll() is None:
            os.kill(watch.pid, signal.SIGKILL)
            watch.wait()
        daemon.cleanup()
