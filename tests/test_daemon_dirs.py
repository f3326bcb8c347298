"""The daemon's directories, end to end (real daemon processes, simulated card and hub): a
second daemon on the same runtime_dir is refused before it touches the first one's control
socket; a state_dir or log_dir that cannot be written stops the start with one line naming it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gpumgr.sim.harness import (
    FAST_HEALTH_YAML,
    FAST_LIFECYCLE_YAML,
    DaemonHarness,
    alive,
    free_port,
    vllm_provider_yaml,
    wait_for,
)

pytestmark = pytest.mark.slow

SETTINGS = FAST_HEALTH_YAML.format(restart_after_s=60) + FAST_LIFECYCLE_YAML


def _run_daemon(h: DaemonHarness, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpumgr.cli", "daemon", "--simulate",
         "--config-dir", str(h.config_dir)],
        env=h.env, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def test_a_second_daemon_on_the_same_runtime_dir_exits_naming_the_first_and_leaves_its_socket(
    tmp_path: Path,
) -> None:
    first = DaemonHarness(tmp_path / "a", "providers:" + vllm_provider_yaml("qwen", free_port()),
                          SETTINGS)
    second = DaemonHarness(tmp_path / "b", "providers:" + vllm_provider_yaml("qwen", free_port()),
                           SETTINGS, env={"GPUMGR_RUNTIME_DIR": str(first.runtime_dir)})
    sock = first.runtime_dir / "gpumgr.sock"
    try:
        first.start()
        pid = first.wait_up("qwen", 60)["pid"]
        before = sock.stat().st_ino
        done = _run_daemon(second)
        assert first.proc is not None
        assert done.returncode == 1, done.stderr
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error")]
        assert lines == [
            f"error: another gpumgr daemon (pid {first.proc.pid}) is running on runtime_dir "
            f"{first.runtime_dir}; stop it first, or give this one its own runtime_dir"
        ], done.stderr
        assert "Traceback" not in done.stderr and "supervisor.spawn" not in done.stderr
        assert sock.stat().st_ino == before and _connects(sock)  # not replaced, not deleted
        assert not (tmp_path / "b" / "state" / "children.json").exists()
        assert first.backend("qwen", first.status())["pid"] == pid and alive(pid)
        assert first.stop() == 0
        assert not sock.exists()  # the owner removes its own socket on the way out
    finally:
        first.cleanup()
        second.cleanup(check_log=False)


@pytest.mark.parametrize("role", ["state", "log", "runtime"])
def test_a_file_where_a_daemon_directory_should_be_ends_the_start_in_one_line(
    tmp_path: Path, role: str
) -> None:
    h = DaemonHarness(tmp_path, "providers: {}\n", SETTINGS)
    where = tmp_path / "blocked"
    where.write_text("a file, not a directory\n")
    h.env[f"GPUMGR_{role.upper()}_DIR"] = str(where)
    done = _run_daemon(h)
    assert done.returncode == 1
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {role}_dir {where} is not writable"), (
        done.stderr)
    assert "remove it or set" in errors[0]
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
    assert where.read_text() == "a file, not a directory\n"


def test_a_full_state_dir_at_start_is_one_line_naming_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() != 0 or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(state)], capture_output=True,
    ).returncode != 0:  # fmt: skip
        pytest.skip("needs root and `mount -t tmpfs` for a full disk")
    try:
        fd = os.open(state / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (4096, 1):
                with pytest.raises(OSError):
                    while True:
                        os.write(fd, b"\0" * size)
        finally:
            os.close(fd)
        h = DaemonHarness(tmp_path, "providers: {}\n", SETTINGS)
        done = _run_daemon(h)
        assert done.returncode == 1
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error")]
        assert len(errors) == 1, done.stderr
        assert errors[0].startswith(f"error: state_dir {state} is not writable (No space left")
        assert "free space on its filesystem" in errors[0]
        assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True, timeout=30)


def test_a_lock_file_that_is_a_link_ends_the_start_in_one_line_and_its_target_is_untouched(
    tmp_path: Path,
) -> None:
    h = DaemonHarness(tmp_path, "providers: {}\n", SETTINGS)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "daemon.lock").symlink_to(victim)
    done = _run_daemon(h)
    assert done.returncode == 1
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error")]
    assert errors == [f"error: {tmp_path / 'state' / 'daemon.lock'} is a symbolic link; gpumgr "
                      "does not write through links (remove it and let gpumgr create the file)"]
    assert victim.read_bytes() == b"precious\n"


def test_an_engine_log_that_is_a_link_fails_that_engine_naming_it_and_its_target_is_untouched(
    tmp_path: Path,
) -> None:
    h = DaemonHarness(tmp_path, "providers:" + vllm_provider_yaml("qwen", free_port()), SETTINGS)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "qwen.log").symlink_to(victim)
    try:
        h.start()
        said = f"{tmp_path / 'log' / 'qwen.log'} is a symbolic link"
        wait_for(lambda: said in (h.backend("qwen", h.status()).get("detail") or ""), 60,
                 "the engine's failure naming its log")
        assert victim.read_bytes() == b"precious\n"
        assert h.stop() == 0
        assert victim.read_bytes() == b"precious\n"
    finally:
        h.cleanup()
