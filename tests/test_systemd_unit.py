"""The unit file says what DESIGN.md §7 requires, and the notify protocol reaches a real socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from gpumgr.sd_notify import Notifier

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "gpumgr.service"


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_unit_is_type_notify_with_watchdog_and_restart_on_failure() -> None:
    d = _directives()
    assert d["Type"] == ["notify"]
    assert d["Restart"] == ["on-failure"]
    assert int(d["WatchdogSec"][0]) > 0
    assert d["ExecStart"][0].split()[1:3] == ["daemon", "--config-dir"]


def test_unit_leaves_children_alive_on_daemon_crash_and_survives_an_oom_killed_child() -> None:
    d = _directives()
    assert d["KillMode"] == ["process"]
    assert d["OOMPolicy"] == ["continue"]
    assert d["RuntimeDirectoryPreserve"] == ["yes"]


def test_unit_hardening_keeps_the_nvidia_devices_reachable() -> None:
    d = _directives()
    assert "PrivateDevices" not in d or d["PrivateDevices"] == ["no"]
    allowed = " ".join(d["DeviceAllow"])
    for dev in ("/dev/nvidiactl", "/dev/nvidia-uvm", "char-nvidia-frontend"):
        assert dev in allowed
    assert {"RuntimeDirectory", "StateDirectory", "CacheDirectory", "LogsDirectory"} <= d.keys()


def test_notifier_sends_ready_status_and_watchdog_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_interval_s == 15.0
        assert n.ready("2 backends up")
        assert sock.recv(256) == b"READY=1\nSTATUS=2 backends up"
        assert n.watchdog()
        assert sock.recv(256) == b"WATCHDOG=1"


def test_notifier_is_silent_outside_systemd_and_ignores_another_pids_watchdog() -> None:
    n = Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert not n.enabled and n.watchdog_interval_s is None
    assert n.ready("x") is False
