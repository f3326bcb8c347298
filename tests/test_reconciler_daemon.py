"""The reconciler's cases that need a whole daemon: a registry change from ``disabled`` to
``standby`` and back, an engine gpumgr cannot prove is its own, a second operator command during
boot adoption, and ``gpumgr reload`` queued behind a swap printing its outcome."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from gpumgr.sim.harness import FAST_HEALTH_YAML, DaemonHarness, alive, free_port, wait_for

pytestmark = pytest.mark.slow

QWEN_7B = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
SETTINGS = FAST_HEALTH_YAML.format(restart_after_s=60) + """
vllm:
  stop_timeout_s: 2
  start_timeout_s: 60
  memory_release_timeout_s: 5
simulate:
  load_seconds: 0.3
"""


def registry(port: int, status: str, description: str = "the 7B") -> str:
    return f"""providers:
  qwen-7b:
    type: vllm
    description: {description}
    base_url: http://127.0.0.1:{port}
    status: {status}
    max_model_len: 4096
    max_num_seqs: 2
    models:
      - name: qwen-coder
        hf_repo: {QWEN_7B}
"""


def test_a_provider_enabled_from_disabled_by_reload_is_started_and_published_with_its_pid(
    tmp_path: Path,
) -> None:
    port = free_port()
    d = DaemonHarness(tmp_path, registry(port, "disabled"), SETTINGS)
    try:
        d.start()
        wait_for(lambda: d.backend("qwen-7b")["state"] == "disabled", 30, "disabled")
        (d.config_dir / "providers.yaml").write_text(registry(port, "standby"))
        assert d.cli("reload").returncode == 0
        wait_for(lambda: d.backend("qwen-7b")["state"] == "stopped", 30, "stopped once enabled")
        started = d.cli("start", "qwen-7b")
        assert started.returncode == 0, started.stderr
        up = d.wait_up("qwen-7b", 30)
        assert up["pid"] and up["managed"] is True
        # and back: the engine is stopped first, then the backend is disabled
        (d.config_dir / "providers.yaml").write_text(registry(port, "disabled"))
        assert d.cli("reload").returncode == 0
        wait_for(lambda: d.backend("qwen-7b")["state"] == "disabled", 30, "disabled again")
        assert not alive(up["pid"])
        assert "backend.illegal_transition" not in d.log_text()
        assert d.stop() == 0
    finally:
        d.cleanup()


def test_a_backend_whose_keeper_failed_is_disabled_by_reload_through_stopped_never_back(
    tmp_path: Path,
) -> None:
    """What the soak found: the keeper had failed (here: the plan, a model the 8 GiB card cannot
    hold), the reload marking it ``disabled`` moved it to ``disabled`` at once, then the
    reconciler's stop of that keeper published ``stopped``: the illegal ``disabled → stopped``.
    Now the stop comes first and ``disabled`` last; enabling it again works as ever."""
    port = free_port()
    small_card = SETTINGS + "  gpus:\n    - memory_total_mib: 8192\n"
    huge = registry(port, "active").replace("max_model_len: 4096", "max_model_len: 32768")
    d = DaemonHarness(tmp_path, huge, small_card)
    try:
        d.start()
        wait_for(lambda: d.backend("qwen-7b")["state"] == "failed", 60, "the keeper failed")
        assert "does not fit" in d.backend("qwen-7b")["detail"]
        (d.config_dir / "providers.yaml").write_text(huge.replace("status: active", "status: disabled"))
        assert d.cli("reload").returncode == 0
        wait_for(lambda: d.backend("qwen-7b")["state"] == "disabled", 30, "disabled")
        time.sleep(0.5)  # nothing moves it afterwards
        assert d.backend("qwen-7b")["state"] == "disabled"
        (d.config_dir / "providers.yaml").write_text(huge.replace("status: active", "status: standby"))
        assert d.cli("reload").returncode == 0
        wait_for(lambda: d.backend("qwen-7b")["state"] == "stopped", 30, "enabled again")
        assert "backend.illegal_transition" not in d.log_text()
        assert d.stop() == 0
    finally:
        d.cleanup()


def test_gpumgr_reload_promoting_a_provider_onto_the_port_another_serves_warns_and_starts_nothing(
    tmp_path: Path,
) -> None:
    """The owner's file marks the 7B ``active`` again while the 14B (swapped in) serves the
    port: a reload has no refusal path of its own, so the 7B's keeper used to wait for the port
    for good. Now the reload applies, prints why the 7B was not started, and the status says so."""
    port = free_port()

    def pair(seven: str) -> str:
        return registry(port, seven) + registry(port, "standby").split("providers:\n", 1)[1].replace(
            "qwen-7b:", "qwen-14b:").replace(QWEN_7B, "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ").replace(
            "name: qwen-coder", "name: qwen-coder-14b")

    d = DaemonHarness(tmp_path, pair("active"), SETTINGS)
    try:
        d.start()
        d.wait_up("qwen-7b", 60)
        swapped = d.cli("swap", "qwen-7b", "qwen-14b")
        assert swapped.returncode == 0, swapped.stderr
        fourteen = d.wait_up("qwen-14b", 60)["pid"]
        (d.config_dir / "providers.yaml").write_text(pair("standby"))
        assert d.cli("reload").returncode == 0
        (d.config_dir / "providers.yaml").write_text(pair("active"))
        reloaded = d.cli("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        assert (f"warning: qwen-7b not started: port {port} is held by qwen-14b (running)"
                in reloaded.stderr), reloaded.stderr
        seven = d.backend("qwen-7b")
        assert seven["state"] == "stopped" and "not started: port" in seven["detail"], seven
        assert d.backend("qwen-14b")["pid"] == fourteen
        desired = json.loads((tmp_path / "state" / "desired.json").read_text())
        assert set(desired["backends"]) == {"qwen-14b"}
        assert d.cli("stop", "qwen-14b").returncode == 0  # nothing held by a waiting keeper
        assert "backend.illegal_transition" not in d.log_text()
        assert d.stop() == 0
    finally:
        d.cleanup()


def test_an_engine_whose_record_is_lost_is_never_published_as_our_serving_engine(
    tmp_path: Path,
) -> None:
    port = free_port()
    d = DaemonHarness(tmp_path, registry(port, "active"), SETTINGS)
    try:
        d.start()
        pid = d.wait_up("qwen-7b", 60)["pid"]
        assert d.proc is not None
        d.proc.kill()
        d.proc.wait()
        (tmp_path / "state" / "children.json").unlink()  # the records are lost
        d.start()
        wait_for(lambda: "not started by gpumgr" in (d.backend("qwen-7b").get("detail") or ""),
                 30, "the stranger on the port named")
        seen: set[str] = set()
        deadline = time.monotonic() + 3  # several probe rounds (interval 0.2 s)
        while time.monotonic() < deadline:
            seen.add(d.backend("qwen-7b")["state"])
            time.sleep(0.1)
        assert "up" not in seen, seen
        stopped = d.cli("stop", "qwen-7b")
        assert stopped.returncode == 0
        assert "not started by gpumgr" in stopped.stdout and alive(pid)
        assert d.stop() == 0
        assert alive(pid)  # never signalled: gpumgr cannot prove it is its own
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, UnboundLocalError):
            pass
        d.cleanup()


def test_gpumgr_reload_during_a_swap_prints_what_it_applied_after_the_swap(tmp_path: Path) -> None:
    port = free_port()
    text = registry(port, "active") + f"""
  qwen-7b-b:
    type: vllm
    base_url: http://127.0.0.1:{port}
    status: standby
    max_model_len: 4096
    max_num_seqs: 2
    env:
      GPUMGR_SIM_LOAD_SECONDS: "3"
    models:
      - name: qwen-coder-b
        hf_repo: {QWEN_7B}
"""
    d = DaemonHarness(tmp_path, text, SETTINGS)
    try:
        d.start()
        d.wait_up("qwen-7b", 60)
        swap = d.cli_popen("swap", "qwen-7b", "qwen-7b-b")
        assert swap.stdout is not None
        wait_for(lambda: "starting qwen-7b-b" in (swap.stdout.readline() or ""), 60, "the start")  # type: ignore[union-attr]
        (d.config_dir / "providers.yaml").write_text(text.replace("the 7B", "edited"))
        reload = d.cli("reload")
        assert reload.returncode == 0, reload.stderr
        # the reload waited for the swap's turn to end, then applied (from the daemon's log)
        order = [e["event"] for e in d.events() if e.get("event") in ("operation.end", "reconciler.reloaded")
                 or (e.get("event") == "command.begin" and e.get("what") == "reload")]
        assert order.index("operation.end") < order.index("command.begin") < order.index("reconciler.reloaded")
        assert "reloaded" in reload.stdout
        assert swap.wait(30) == 0
        (d.config_dir / "providers.yaml").write_text(text.replace("max_model_len: 4096", "max_model_len: lots", 1))
        bad = d.cli("reload")
        assert bad.returncode == 2 and "providers.yaml:" in bad.stderr and "Traceback" not in bad.stderr
        desired = json.loads((tmp_path / "state" / "desired.json").read_text())
        assert set(desired["backends"]) == {"qwen-7b-b"} and "intent" not in desired
        assert d.stop() == 0
    finally:
        d.cleanup()
