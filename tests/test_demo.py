"""The README's main job: ``gpumgr demo`` brings the example's active model up and stops cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import EXAMPLE_CONFIG

pytestmark = pytest.mark.slow  # the demo runs a daemon, engines and a simulated Ollama


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
    assert "swapped qwen-7b → qwen-14b in" in out  # the restart swap
    assert "qwen-14b asleep (level 1)" in out and "swapped qwen-14b → qwen-7b (sleep mode)" in out
    assert "qwen-14b awake and answering" in out  # woken, not cold-started
    assert "daemon exited with status 0" in out
    assert "Traceback" not in proc.stderr
    leftovers = [
        p for p in psutil.process_iter(["cmdline"])
        if "gpumgr.sim.vllm" in " ".join(p.info["cmdline"] or [])
        and str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []


def test_ctrl_c_during_the_demo_stops_everything_and_exits_0_without_a_traceback(
    tmp_path: Path,
) -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "gpumgr.cli", "demo", "--config-dir", str(EXAMPLE_CONFIG),
         "--workdir", str(tmp_path / "demo"), "--load-seconds", "0.3", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "qwen-7b: starting -> up" in line or "gpumgr swap" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err and "Traceback" not in out

    def leftovers() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"])
                if str(tmp_path) in " ".join(p.info["cmdline"] or [])]

    # a killed process may take a moment to be reaped on a loaded machine; bounded, and named
    deadline = time.monotonic() + 10
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers() == []


def test_a_real_ctrl_c_in_a_terminal_ends_demo_follow_with_0_and_nothing_left_running(
    tmp_path: Path,
) -> None:
    """``gpumgr demo --follow`` on a pseudo-terminal whose session it leads: ``\\x03`` written
    to the terminal makes the tty driver send SIGINT to the whole foreground process group, as
    a person's Ctrl-C (or ``tmux send-keys C-c``) does."""
    import fcntl
    import json
    import os
    import re
    import struct
    import termios
    import threading
    import time

    import httpx2
    import yaml

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    workdir = tmp_path / "demo"
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpumgr.cli", "demo", "--follow", "--config-dir",
         str(EXAMPLE_CONFIG), "--workdir", str(workdir), "--load-seconds", "0.3",
         "--timeout", "60"],
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # our tty controls its session
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def screen() -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))

    try:
        deadline = time.monotonic() + 120
        while "following until Ctrl-C" not in screen():
            assert proc.poll() is None, screen()
            assert time.monotonic() < deadline, screen()
            time.sleep(0.2)
        listen = yaml.safe_load((workdir / "config" / "gpumgr.yaml").read_text())["listen"]
        doc = httpx2.get(f"http://{listen}/v1/status", timeout=5).json()
        engines = [b["pid"] for b in doc["backends"] if b["type"] == "vllm" and b["pid"]]
        assert engines, json.dumps(doc)[:2000]
        assert proc.poll() is None  # --follow: still running after the swaps
        # the one variable the demo prints is all the CLI needs to reach it
        assert "export GPUMGR_CONFIG_DIR=" in screen()
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMGR_")}
        cli_env.update(GPUMGR_CONFIG_DIR=str(workdir / "config"), COLUMNS="80")
        for args in (["status"], ["gpus"], ["logs", "qwen-7b", "-n", "3"]):
            cli = subprocess.run([sys.executable, "-m", "gpumgr.cli", *args], env=cli_env,
                                 capture_output=True, text=True, timeout=60)
            assert cli.returncode == 0, (args, cli.stdout, cli.stderr)
            assert cli.stdout.strip(), args
        os.write(master, b"\x03")  # Ctrl-C, through the terminal
        rc = proc.wait(timeout=90)
        reader.join(5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        os.close(master)
    out = screen()
    assert rc == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "interrupted: the daemon and its engines are stopped" in out

    def running() -> list[object]:
        engines_left = [pid for pid in engines if psutil.pid_exists(pid)
                        and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        return engines_left + [p for p in psutil.process_iter(["cmdline"])
                               if str(tmp_path) in " ".join(p.info["cmdline"] or [])]

    # a killed process may take a moment to be reaped on a loaded machine; bounded, and named
    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running() == []
