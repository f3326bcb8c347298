"""The daemon with its backend manager, end to end (real processes, simulated card and hub):
reload diffs on SIGHUP, one daemon per state directory, tolerant records, adoption beside a
download, a hub that is down at boot, one update per engine death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from gpumgr.sim.harness import (
    FAST_HEALTH_YAML,
    FAST_LIFECYCLE_YAML,
    DaemonHarness,
    alive,
    assert_clean_daemon_log,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.slow

QWEN = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
DEEPSEEK = "TheBloke/deepseek-coder-6.7B-instruct-AWQ"
SETTINGS = FAST_HEALTH_YAML.format(restart_after_s=60) + FAST_LIFECYCLE_YAML
BIG_CARD = """
  gpus:
    - name: RTX A6000
      memory_total_mib: 49152
"""
"""A 48 GiB simulated card, so that four small engines fit at once."""


def provider(name: str, port: int, repo: str = DEEPSEEK, *, max_model_len: int = 1024,
             description: str = "an engine", status: str = "active") -> str:
    return f"""
  {name}:
    type: vllm
    description: {description}
    base_url: http://127.0.0.1:{port}
    status: {status}
    max_model_len: {max_model_len}
    max_num_seqs: 1
    models:
      - name: {name}-served
        hf_repo: {repo}
"""


def sighup(daemon: DaemonHarness) -> None:
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGHUP)


def test_sighup_starts_added_stops_removed_restarts_changed_and_leaves_a_description_edit_alone(
    tmp_path: Path,
) -> None:
    ports = {n: free_port() for n in ("kept", "removed", "changed", "added")}
    settings = SETTINGS.replace("simulate:\n", "simulate:\n" + BIG_CARD.lstrip("\n"))
    v1 = "providers:" + provider("kept", ports["kept"], description="first words") + provider(
        "removed", ports["removed"]) + provider("changed", ports["changed"])
    daemon = DaemonHarness(tmp_path, v1, settings)
    try:
        daemon.start()
        pids = {n: daemon.wait_up(n, 60)["pid"] for n in ("kept", "removed", "changed")}
        v2 = "providers:" + provider("kept", ports["kept"], description="other words") + provider(
            "changed", ports["changed"], max_model_len=512) + provider("added", ports["added"])
        (daemon.config_dir / "providers.yaml").write_text(v2)
        sighup(daemon)
        wait_for(lambda: "config.reloaded" in daemon.log_text(), 60, "the reload")
        reloaded = [e for e in daemon.events() if e.get("event") == "config.reloaded"][-1]
        assert (reloaded["started"], reloaded["stopped"], reloaded["restarted"],
                reloaded["unchanged"]) == (["added"], ["removed"], ["changed"], ["kept"])
        added = daemon.wait_up("added", 60)
        changed = daemon.wait_up("changed", 60)
        doc = daemon.status()
        assert daemon.backend("kept", doc)["pid"] == pids["kept"]  # untouched: same process
        assert changed["pid"] != pids["changed"]
        assert added["pid"] not in pids.values()
        assert "removed" not in {b["name"] for b in doc["backends"]}
        assert not alive(pids["removed"]) and not alive(pids["changed"])
        desired = json.loads((tmp_path / "state" / "desired.json").read_text())
        assert sorted(desired["backends"]) == ["added", "changed", "kept"]
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()


def test_a_second_daemon_on_the_same_state_directory_exits_naming_the_first_and_touches_nothing(
    tmp_path: Path,
) -> None:
    providers = "providers:" + provider("qwen", free_port(), QWEN)
    first = DaemonHarness(tmp_path, providers, SETTINGS)
    second = DaemonHarness(tmp_path, providers, SETTINGS)
    second.log_path = tmp_path / "second.log"
    try:
        first.start()
        pid = first.wait_up("qwen", 60)["pid"]
        with open(second.log_path, "wb") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "gpumgr.cli", "daemon", "--simulate",
                 "--config-dir", str(second.config_dir)],
                env=second.env, stdout=out, stderr=subprocess.STDOUT, timeout=60,
            )  # fmt: skip
        assert proc.returncode == 1
        said = second.log_text()
        assert f"another gpumgr daemon (pid {first.proc.pid if first.proc else '?'})" in said
        assert "Traceback" not in said and "supervisor.adopt" not in said
        time.sleep(0.5)  # had it adopted and stopped the engine, it would be gone by now
        doc = first.status()
        assert first.backend("qwen", doc)["pid"] == pid and first.backend("qwen", doc)["available"]
        assert alive(pid)
        assert first.stop() == 0
    finally:
        first.cleanup()


@pytest.mark.parametrize("content", [
    '{"children": "x"}',
    '[1]',
    '{"version": 1, "children": [1, "x", {"backend": "qwen", "pid": -5, "pgid": 1, '
    '"create_time": 1.0, "cmdline": []}, {"backend": "qwen", "pid": "12", "pgid": 12, '
    '"create_time": 1.0, "cmdline": ["a"]}, {"backend": "qwen"}]}',
])
def test_a_children_file_of_the_wrong_shape_is_logged_and_ignored_and_the_daemon_serves(
    tmp_path: Path, content: str,
) -> None:
    providers = "providers:" + provider("qwen", free_port(), QWEN)
    daemon = DaemonHarness(tmp_path, providers, SETTINGS)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "children.json").write_text(content)
    try:
        daemon.start()
        daemon.wait_up("qwen", 60)
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert "supervisor.record" in daemon.log_text()  # said so (unreadable / ignored)
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()


def test_an_adopted_engine_is_up_at_once_while_another_backend_downloads(tmp_path: Path) -> None:
    from gpumgr.sim.catalog import materialise_catalog
    from gpumgr.sim.hub import HubSwitches, start_sim_hub

    repos = materialise_catalog(tmp_path / "repos", [QWEN, DEEPSEEK])
    fast = start_sim_hub(repos)
    slow = start_sim_hub(repos, switches=HubSwitches(slow_bytes_per_s=50))
    qwen_port, deepseek_port = free_port(), free_port()
    try:
        settings = SETTINGS.replace("simulate:\n", f"simulate:\n  hub_endpoint: {fast.url}\n")
        daemon = DaemonHarness(tmp_path / "d", "providers:" + provider("qwen", qwen_port, QWEN),
                               settings)
        try:
            daemon.start()
            pid = daemon.wait_up("qwen", 60)["pid"]
            assert daemon.proc is not None
            daemon.proc.kill()  # the daemon crashes; its engine serves on
            daemon.proc.wait()
            # the next daemon also runs deepseek, whose weights come slowly
            (daemon.config_dir / "providers.yaml").write_text(
                "providers:" + provider("qwen", qwen_port, QWEN)
                + provider("deepseek", deepseek_port, DEEPSEEK))
            (daemon.config_dir / "gpumgr.yaml").write_text(settings.replace(fast.url, slow.url))
            daemon.start()
            ready_at = time.monotonic()
            up = daemon.wait_up("qwen", 60)
            waited_s = time.monotonic() - ready_at
            assert up["pid"] == pid  # adopted, not restarted
            assert daemon.backend("deepseek")["state"] == "downloading"
            # the download at 50 B/s would take hours: anything short means it did not wait
            assert waited_s < 20, f"the adopted engine waited {waited_s:.1f} s for another's download"
            assert daemon.stop(timeout_s=20) == 0
        finally:
            daemon.cleanup()
    finally:
        fast.stop()
        slow.stop()


def test_a_hub_that_is_unreachable_at_boot_is_retried_until_the_backend_comes_up(
    tmp_path: Path,
) -> None:
    from gpumgr.sim.catalog import materialise_catalog
    from gpumgr.sim.hub import start_sim_hub

    hub_port = free_port()
    settings = SETTINGS.replace(
        "simulate:\n", f"simulate:\n  hub_endpoint: http://127.0.0.1:{hub_port}\n")
    daemon = DaemonHarness(tmp_path / "d", "providers:" + provider("qwen", free_port(), QWEN),
                           settings)
    hub = None
    try:
        daemon.start()
        down = daemon.wait_backend("qwen", lambda b: "retrying in" in (b.get("detail") or ""), 30)
        assert down["state"] == "down" and not down["available"]
        repos = materialise_catalog(tmp_path / "repos", [QWEN])
        hub = start_sim_hub(repos, port=hub_port)
        daemon.wait_up("qwen", 60)
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
        if hub is not None:
            hub.stop()


def test_an_engine_death_is_published_as_one_update_with_state_pid_and_restarts_together(
    tmp_path: Path,
) -> None:
    daemon = DaemonHarness(tmp_path, "providers:" + provider("qwen", free_port(), QWEN), SETTINGS)
    try:
        daemon.start()
        pid = daemon.wait_up("qwen", 60)["pid"]
        sse = daemon.sse()
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        found = sse.first(lambda f: f.get("name") == "qwen" and f.get("pid") != pid,
                          after=killed_at, timeout_s=20)
        assert found is not None, sse.text()
        _, first = found
        assert first["state"] in ("restarting", "down") and first["pid"] is None
        assert first["restarts"] == 1 and not first["available"]
        daemon.wait_up("qwen", 60)
        frames = [f for _, f in sse.frames if f.get("name") == "qwen"]
        assert not [f for f in frames if f["state"] == "up" and f["pid"] is None], frames
        assert daemon.stop() == 0
        sse.join()
    finally:
        daemon.cleanup()



def test_the_log_check_itself_catches_an_illegal_transition() -> None:
    """The end-to-end tests' log check must be able to fail."""
    with pytest.raises(AssertionError, match="1 defect"):
        assert_clean_daemon_log('{"event": "backend.illegal_transition", "backend": "x"}')
    assert_clean_daemon_log('{"event": "backend.state", "backend": "x"}')


def test_with_default_health_settings_a_hung_engine_is_suspect_within_about_a_second(
    tmp_path: Path,
) -> None:
    """What the router acts on (DESIGN §5: skip a suspect backend while another remains; an
    unavailable one always). Measured here ~1 s; CI gets slack."""
    daemon = DaemonHarness(tmp_path, "providers:" + provider("qwen", free_port(), QWEN),
                           FAST_LIFECYCLE_YAML + "health:\n  restart_unresponsive_after_s: null\n")
    try:
        daemon.start()
        pid = daemon.wait_up("qwen", 60)["pid"]
        sse = daemon.sse()
        time.sleep(0.3)
        hung_at, hung_wall = time.monotonic(), time.time()
        os.killpg(pid, signal.SIGSTOP)
        try:
            found = sse.first(lambda f: f.get("name") == "qwen"
                              and (f.get("suspect") or not f.get("available")),
                              after=hung_at, timeout_s=15)
        finally:
            os.killpg(pid, signal.SIGCONT)
        assert found is not None, sse.text()
        # when the daemon published it (the failed probe's last_check, its own clock), not when
        # this test's loaded SSE reader thread got round to it
        took = datetime.fromisoformat(found[1]["last_check"]).timestamp() - hung_wall
        print(f"hung engine flagged after {took:.2f} s (read {found[0] - hung_at:.2f} s)")
        assert took < 4.0
        daemon.wait_backend("qwen", lambda b: b["available"] and not b["suspect"], 30)
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
