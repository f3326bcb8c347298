"""``gpumgr swap`` end to end: the daemon on the simulated card, the CLI over the control socket.

Break-before-make when the new model does not fit beside the old one (draining published
before the old process gets SIGTERM), make-before-break when it does, rollback when the new
engine fails, refusal before anything stops when it cannot fit at all, one mutation at a time,
adoption of the swapped-in engine after a daemon crash, and requests sent all along never hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gpumgr.sim.harness import FAST_HEALTH_YAML, DaemonHarness, alive, free_port, wait_for

pytestmark = pytest.mark.slow

QWEN_7B = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
QWEN_14B = "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"
DEEPSEEK = "TheBloke/deepseek-coder-6.7B-instruct-AWQ"
SETTINGS = FAST_HEALTH_YAML.format(restart_after_s=60) + """
vllm:
  stop_timeout_s: 2
  start_timeout_s: 60
  memory_release_timeout_s: 5
  drain_timeout_s: 5
restart:
  backoff_base_s: 0.2
  backoff_cap_s: 1
  max_crashes: 50
simulate:
  load_seconds: 0.3
"""


def provider(name: str, port: int, repo: str, *, status: str = "active", served: str = "",
             max_model_len: int = 8192, env: dict[str, str] | None = None) -> str:
    env_yaml = "".join(f"      {k}: \"{v}\"\n" for k, v in (env or {}).items())
    return f"""
  {name}:
    type: vllm
    base_url: http://127.0.0.1:{port}
    status: {status}
    max_model_len: {max_model_len}
    max_num_seqs: 4
    models:
      - name: {served or name + "-served"}
        hf_repo: {repo}
""" + (f"    env:\n{env_yaml}" if env else "")


class Box:
    """A daemon on the simulated card and the CLI that drives it."""

    def __init__(self, tmp: Path, providers: str) -> None:
        self.events_file = tmp / "engine-events.jsonl"
        self.daemon = DaemonHarness(tmp, "providers:" + providers, SETTINGS,
                                    env={"GPUMGR_SIM_EVENTS_FILE": str(self.events_file)})

    def cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return self.daemon.cli(*args, timeout_s=timeout_s)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return self.daemon.cli_popen(*args)

    def engine_events(self) -> list[dict[str, Any]]:
        if not self.events_file.exists():
            return []
        return [json.loads(x) for x in self.events_file.read_text().splitlines() if x.strip()]

    def first_event(self, pid: int, name: str) -> float:
        return next(e["t"] for e in self.engine_events() if e["pid"] == pid and e["event"] == name)


@pytest.fixture
def box(tmp_path: Path) -> Any:
    port = free_port()
    b = Box(tmp_path, provider("qwen-7b", port, QWEN_7B, served="qwen-coder")
            + provider("qwen-14b", port, QWEN_14B, status="standby", served="qwen-coder-14b"))
    try:
        b.daemon.start()
        yield b
    finally:
        b.daemon.cleanup()


def test_7b_to_14b_is_break_before_make_and_draining_is_published_before_sigterm(box: Box) -> None:
    d = box.daemon
    old = d.wait_up("qwen-7b", 60)["pid"]
    sse = d.sse()
    done = box.cli("swap", "qwen-7b", "qwen-14b")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("draining qwen-7b" in x for x in lines)
    assert any("memory released" in x for x in lines)
    assert "swapped qwen-7b → qwen-14b" in lines[-1]
    new = d.wait_up("qwen-14b", 30)
    assert new["port"] == d.backend("qwen-7b")["port"]
    assert d.backend("qwen-7b")["state"] == "stopped"
    draining = sse.first(lambda f: f.get("name") == "qwen-7b" and f["state"] == "draining")
    assert draining is not None, sse.text()
    drained_at = datetime.fromisoformat(draining[1]["since"].replace("Z", "+00:00")).timestamp()
    assert drained_at < box.first_event(old, "exit")  # the router knew before the process stopped
    assert box.first_event(old, "exit") < box.first_event(new["pid"], "init_start")  # break first
    desired = json.loads((d.tmp / "state" / "desired.json").read_text())
    assert list(desired["backends"]) == ["qwen-14b"]
    assert d.stop() == 0


def test_a_swap_that_cannot_fit_is_refused_before_anything_stops(tmp_path: Path) -> None:
    port, other = free_port(), free_port()
    b = Box(tmp_path, provider("qwen-7b", port, QWEN_7B)
            + provider("huge", other, QWEN_14B, status="standby", max_model_len=131072))
    try:
        b.daemon.start()
        pid = b.daemon.wait_up("qwen-7b", 60)["pid"]
        done = b.cli("swap", "qwen-7b", "huge")
        assert done.returncode == 1
        assert "does not fit even once qwen-7b is stopped" in done.stderr
        assert "Traceback" not in done.stderr
        up = b.daemon.backend("qwen-7b")
        assert up["pid"] == pid and up["available"]
        assert [e for e in b.engine_events() if e["event"] == "exit"] == []
    finally:
        b.daemon.cleanup()


def test_a_model_on_another_port_that_fits_beside_is_started_before_the_old_one_stops(
    tmp_path: Path,
) -> None:
    b = Box(tmp_path, provider("qwen-7b", free_port(), QWEN_7B, max_model_len=1024)
            + provider("deepseek", free_port(), DEEPSEEK, status="standby", max_model_len=1024))
    try:
        b.daemon.start()
        old = b.daemon.wait_up("qwen-7b", 60)["pid"]
        done = b.cli("swap", "qwen-7b", "deepseek")
        assert done.returncode == 0, done.stderr
        assert "make-before-break" in done.stdout
        new = b.daemon.wait_up("deepseek", 30)["pid"]
        assert b.first_event(new, "serving") < b.first_event(old, "exit")
        assert b.daemon.backend("qwen-7b")["state"] == "stopped"
    finally:
        b.daemon.cleanup()


def test_a_swap_to_an_engine_that_crashes_rolls_back_and_exits_1_with_its_last_lines(
    tmp_path: Path,
) -> None:
    port = free_port()
    b = Box(tmp_path, provider("qwen-7b", port, QWEN_7B)
            + provider("qwen-14b", port, QWEN_14B, status="standby",
                       env={"GPUMGR_SIM_OOM_AT_START": "1"}))
    try:
        b.daemon.start()
        old = b.daemon.wait_up("qwen-7b", 60)["pid"]
        done = b.cli("swap", "qwen-7b", "qwen-14b")
        assert done.returncode == 1, done.stdout
        assert "qwen-14b failed to start" in done.stderr and "qwen-7b is back" in done.stderr
        assert "last lines of the engine's log" in done.stderr
        assert "CUDA out of memory" in done.stderr
        back = b.daemon.wait_up("qwen-7b", 30)
        assert back["pid"] != old
        assert b.daemon.backend("qwen-14b")["state"] == "stopped"
        desired = json.loads((b.daemon.tmp / "state" / "desired.json").read_text())
        assert list(desired["backends"]) == ["qwen-7b"]
    finally:
        b.daemon.cleanup()


def test_a_second_mutation_while_a_swap_runs_is_refused_at_once(tmp_path: Path) -> None:
    port = free_port()
    b = Box(tmp_path, provider("qwen-7b", port, QWEN_7B)
            + provider("qwen-14b", port, QWEN_14B, status="standby",
                       env={"GPUMGR_SIM_LOAD_SECONDS": "6"}))
    try:
        b.daemon.start()
        b.daemon.wait_up("qwen-7b", 60)
        first = b.popen("swap", "qwen-7b", "qwen-14b")
        assert first.stdout is not None
        wait_for(lambda: "starting qwen-14b" in (first.stdout.readline() or ""), 30, "the swap")
        # The new engine is frozen mid-load (SIGSTOP) until both answers are in: the swap runs
        # for as long as the two CLIs need to start, however loaded the machine. Queued behind
        # it, they would not answer at all.
        loading = int(b.daemon.wait_backend("qwen-14b", lambda x: bool(x.get("pid")), 30)["pid"])
        os.killpg(loading, signal.SIGSTOP)
        try:
            second, stop = b.popen("swap", "qwen-14b", "qwen-7b"), b.popen("stop", "qwen-7b")
            _, second_err = second.communicate(timeout=60)  # answered, not queued behind it
            stop.communicate(timeout=60)
            assert b.daemon.backend("qwen-14b")["state"] == "starting"  # the swap still ran
        finally:
            os.killpg(loading, signal.SIGCONT)
        assert second.returncode == 1
        assert "busy: swap qwen-7b → qwen-14b since" in second_err
        assert stop.returncode == 1
        assert first.wait(timeout=60) == 0
    finally:
        b.daemon.cleanup()


def test_after_a_swap_a_daemon_sigkill_comes_back_with_the_new_model_adopted(box: Box) -> None:
    d = box.daemon
    d.wait_up("qwen-7b", 60)
    assert box.cli("swap", "qwen-7b", "qwen-14b").returncode == 0
    pid = d.wait_up("qwen-14b", 30)["pid"]
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    d.start()
    assert d.wait_up("qwen-14b", 30)["pid"] == pid
    assert d.backend("qwen-7b")["state"] == "stopped"
    assert d.stop() == 0


def test_requests_during_a_swap_never_hang_and_those_in_flight_at_drain_complete(
    tmp_path: Path,
) -> None:
    port = free_port()
    slow = {"GPUMGR_SIM_TOKEN_DELAY_S": "0.05"}  # each answer streams for ~0.4 s
    b = Box(tmp_path, provider("qwen-7b", port, QWEN_7B, env=slow, served="qwen-coder")
            + provider("qwen-14b", port, QWEN_14B, status="standby", env=slow, served="qwen-coder"))
    results: list[tuple[float, float, str]] = []  # (sent at, wall clock; took; outcome)
    stop = threading.Event()

    def client() -> None:
        with httpx2.Client(timeout=httpx2.Timeout(10.0)) as http:
            while not stop.is_set():
                t0, m0 = time.time(), time.monotonic()
                try:
                    r = http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={
                        "model": "qwen-coder", "max_tokens": 8,
                        "messages": [{"role": "user", "content": "hi"}]})
                    outcome = str(r.status_code)
                except httpx2.HTTPError as exc:
                    outcome = type(exc).__name__
                results.append((t0, time.monotonic() - m0, outcome))
                time.sleep(max(0.0, 0.02 - (time.monotonic() - m0)))

    try:
        b.daemon.start()
        b.daemon.wait_up("qwen-7b", 60)
        threads = [threading.Thread(target=client) for _ in range(4)]  # ~50 requests/s in all
        for t in threads:
            t.start()
        time.sleep(1.0)
        done = b.cli("swap", "qwen-7b", "qwen-14b")
        assert done.returncode == 0, done.stderr
        b.daemon.wait_up("qwen-14b", 30)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        # When the daemon published `draining` (its own log's clock, not when a reader here got
        # the event: on a loaded machine that can come after the engine is gone).
        drain_at = next(
            datetime.fromisoformat(e["timestamp"]).timestamp() for e in b.daemon.events()
            if e.get("event") == "backend.state" and e.get("backend") == "qwen-7b"
            and e.get("new") == "draining")
        assert len(results) > 50
        assert max(took for _, took, _ in results) < 8, "a request hung"  # 10 s: its timeout
        failed = [(t, took, o) for t, took, o in results if o != "200"]
        assert all(took < 2.0 for _, took, _ in failed), f"slow failures: {failed}"
        before_drain = [(t, took, o) for t, took, o in results if t + took >= drain_at > t + 0.05]
        assert before_drain and all(o == "200" for _, _, o in before_drain), before_drain
        assert any(o == "200" and t > drain_at + 1 for t, _, o in results)  # the 14B serves
    finally:
        stop.set()
        b.daemon.cleanup()


def test_control_calls_need_the_socket_or_the_token_and_tcp_is_read_only_by_default(
    box: Box,
) -> None:
    d = box.daemon
    d.wait_up("qwen-7b", 60)
    body = {"old": "qwen-7b", "new": "qwen-14b"}
    refused = httpx2.post(d.base_url + "/v1/control/swap", json=body, timeout=5)
    assert refused.status_code in (404, 405)  # no control route on TCP without a token
    sock = d.runtime_dir / "gpumgr.sock"
    assert oct(sock.stat().st_mode & 0o777) == "0o660"
    os.chmod(d.runtime_dir, 0o755)
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None or os.geteuid() != 0:
        pytest.skip("needs root and a system python3 to try the socket as another user")
    probe = subprocess.run(
        [system_python, "-c",
         "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])", str(sock)],
        user="nobody", capture_output=True, text=True, timeout=30,
    )
    assert probe.returncode != 0 and "PermissionError" in probe.stderr
    assert d.backend("qwen-7b")["available"]
    oversized = box.cli("swap", "qwen-7b", "x" * 5000)
    assert oversized.returncode == 2


def test_with_a_token_the_tcp_listener_takes_control_calls_that_carry_it_and_no_others(
    tmp_path: Path,
) -> None:
    token = "t0k3n-for-the-control-plane-0123456789"
    port = free_port()
    b = Box(tmp_path, provider("qwen-7b", port, QWEN_7B))
    b.daemon.env["GPUMGR_CONTROL_TOKEN"] = token
    try:
        b.daemon.start()
        pid = b.daemon.wait_up("qwen-7b", 60)["pid"]
        url = b.daemon.base_url + "/v1/control/restart"
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token-00"},
                        {"Authorization": token}):
            refused = httpx2.post(url, json={"name": "qwen-7b"}, headers=headers, timeout=5)
            assert refused.status_code == 401
        assert b.daemon.backend("qwen-7b")["pid"] == pid  # nothing happened
        with httpx2.stream("POST", url, json={"name": "qwen-7b"},
                           headers={"Authorization": f"Bearer {token}"}, timeout=60) as r:
            assert r.status_code == 200
            last = [json.loads(x) for x in r.iter_lines() if x.strip()][-1]
        assert last["ok"] is True, last
        assert b.daemon.wait_up("qwen-7b", 30)["pid"] != pid
        assert token not in b.daemon.log_text()
    finally:
        b.daemon.cleanup()


def test_a_loading_engine_shows_elapsed_and_expected_time_from_its_last_start(
    tmp_path: Path,
) -> None:
    b = Box(tmp_path, provider("qwen-7b", free_port(), QWEN_7B,
                               env={"GPUMGR_SIM_LOAD_SECONDS": "2.5"}))
    try:
        d = b.daemon
        d.start()
        first = d.wait_backend("qwen-7b", lambda x: x["state"] == "starting", 30)
        assert first["eta_s"] is None  # never started here before: no expectation yet
        d.wait_up("qwen-7b", 60)
        assert d.backend("qwen-7b")["progress"] is None
        startup = d.tmp / "state" / "startup.json"
        wait_for(startup.exists, 30, "the measured start")  # a probe may see it up a bit first
        measured = json.loads(startup.read_text())["qwen-7b"]
        assert 2.5 <= measured < 30
        restart = b.popen("restart", "qwen-7b")
        loading = d.wait_backend(
            "qwen-7b", lambda x: x["state"] == "starting" and (x["progress"] or 0) > 0, 30)
        assert f"of ~{measured:.0f} s" in loading["detail"]
        assert 0 < loading["progress"] < 1 and 0 <= loading["eta_s"] <= measured
        assert restart.wait(timeout=60) == 0
        assert d.wait_up("qwen-7b", 30)["eta_s"] is None
    finally:
        b.daemon.cleanup()


def test_logs_show_the_engines_last_lines_and_a_missing_daemon_is_one_line_exit_1(
    box: Box,
) -> None:
    d = box.daemon
    d.wait_up("qwen-7b", 60)
    logs = box.cli("logs", "qwen-coder", "-n", "5")  # by served name
    assert logs.returncode == 0, logs.stderr
    assert len(logs.stdout.splitlines()) == 5
    assert "Application startup complete" in box.cli("logs", "qwen-7b", "-n", "200").stdout
    unknown = box.cli("logs", "nope")
    assert unknown.returncode == 2 and "no provider or served model is named 'nope'" in unknown.stderr
    assert d.stop() == 0
    gone = box.cli("swap", "qwen-7b", "qwen-14b")
    assert gone.returncode == 1
    assert gone.stderr.count("\n") == 1 and "gpumgr daemon is not running" in gone.stderr
    assert "systemctl start gpumgr" in gone.stderr


@pytest.mark.parametrize("phase", ["loading", "draining"])
def test_a_daemon_sigkilled_mid_swap_comes_back_with_exactly_one_model_serving(
    tmp_path: Path, phase: str,
) -> None:
    """A real SIGKILL (no clean-up runs): while the 14B loads, the next daemon adopts it and
    finishes the swap; while the 7B drains a long request, the next daemon keeps the 7B. Either
    way one engine serves the port and desired.json says which."""
    port = free_port()
    b = Box(tmp_path, provider("qwen-7b", port, QWEN_7B, served="qwen-coder",
                               env={"GPUMGR_SIM_TOKEN_DELAY_S": "0.5"})
            + provider("qwen-14b", port, QWEN_14B, status="standby", served="qwen-coder-14b",
                       env={"GPUMGR_SIM_LOAD_SECONDS": "4"}))
    d = b.daemon
    try:
        d.start()
        old = d.wait_up("qwen-7b", 60)["pid"]
        slow: threading.Thread | None = None
        if phase == "draining":  # a ~5 s answer (10 tokens) in flight keeps the drain going
            body = {"model": "qwen-coder", "prompt": "x", "max_tokens": 100}

            def in_flight() -> None:  # may be cut when the next daemon finishes the swap
                with contextlib.suppress(httpx2.HTTPError):
                    httpx2.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30)

            slow = threading.Thread(target=in_flight, daemon=True)
            slow.start()
            time.sleep(0.3)
        swap = b.popen("swap", "qwen-7b", "qwen-14b")
        wanted = "starting qwen-14b" if phase == "loading" else "draining qwen-7b"
        assert swap.stdout is not None
        wait_for(lambda: wanted in (swap.stdout.readline() or ""), 60, wanted)  # type: ignore[union-attr]
        if phase == "loading":
            time.sleep(0.5)
        desired = json.loads((d.tmp / "state" / "desired.json").read_text())
        assert desired["intent"]["operation"] == "swap qwen-7b → qwen-14b"
        assert d.proc is not None
        d.proc.kill()
        d.proc.wait()
        swap.wait(30)
        old_alive = alive(old)  # draining: normally yes; a loaded machine may be past SIGTERM
        d.start()
        expected = "qwen-7b" if old_alive else "qwen-14b"
        if phase == "loading":
            assert not old_alive
        up = d.wait_up(expected, 60)
        other = "qwen-7b" if expected == "qwen-14b" else "qwen-14b"
        wait_for(lambda: "intent" not in json.loads((d.tmp / "state" / "desired.json").read_text()),
                 30, "the intent settled")
        desired = json.loads((d.tmp / "state" / "desired.json").read_text())
        assert set(desired["backends"]) == {expected}
        assert d.backend(other)["state"] == "stopped"
        if expected == "qwen-7b":
            assert up["pid"] == old  # adopted, never stopped
        print(f"\n{phase}: the old engine was {'alive' if old_alive else 'gone'} at the kill; "
              f"converged to {expected}")
        assert d.stop() == 0
    finally:
        d.cleanup()

