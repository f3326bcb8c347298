"""The I/O toolkit: one atomic write, files opened for writing never through a symbolic link,
directories proven writable at start (``gpumgr.fsio``, ``gpumgr.instance_lock``,
``gpumgr.supervisor.logs``). Real files, real links, real locks."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpumgr.errors import GpumgrError
from gpumgr.fsio import RefusedPath, open_nofollow, write_atomic
from gpumgr.instance_lock import AlreadyRunning, DaemonLocks, InstanceLock, ensure_writable
from gpumgr.supervisor import logs
from gpumgr.supervisor.system import System

SECRET = b"root:$6$do-not-touch:19000:0:99999:7:::\n"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(SECRET)
    return victim


def test_write_atomic_replaces_the_file_with_its_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    write_atomic(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_write_atomic_replaces_a_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    path = tmp_path / "children.json"
    path.symlink_to(victim)
    write_atomic(path, b"{}")
    assert victim.read_bytes() == SECRET
    assert not path.is_symlink() and path.read_bytes() == b"{}"


def test_write_atomic_failing_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "sub", b"new")  # rename over a directory fails after the write
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "sub"]


def test_every_atomic_writer_of_the_package_is_the_one_in_fsio() -> None:
    """No second copy of temp-file + rename in the package (the issue found four)."""
    root = Path(__file__).resolve().parents[1] / "daemon" / "gpumgr"
    found = subprocess.run(
        ["grep", "-rlE", "--include=*.py", r"mkstemp|NamedTemporaryFile|os\.replace\(tmp", str(root)],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    rel = sorted(str(Path(f).relative_to(root)) for f in found)
    assert rel == ["fsio.py", "supervisor/logs.py"]  # logs: the copy of a rotated log


def test_system_write_atomic_creates_the_directory_and_writes_0600(tmp_path: Path) -> None:
    path = tmp_path / "new" / "desired.json"
    System().write_atomic(path, b"{}")
    assert path.read_bytes() == b"{}" and path.stat().st_mode & 0o777 == 0o600


def test_open_nofollow_refuses_a_link_naming_it_and_leaves_the_target(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    link = tmp_path / "qwen.log"
    link.symlink_to(victim)
    with pytest.raises(RefusedPath) as caught:
        open_nofollow(link, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
    assert str(caught.value).startswith(f"{link} is a symbolic link")
    assert "\n" not in str(caught.value)
    assert victim.read_bytes() == SECRET


def test_open_nofollow_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "qwen.log"
    os.mkfifo(fifo)
    with pytest.raises(RefusedPath, match="not a regular file"):
        open_nofollow(fifo, os.O_WRONLY | os.O_APPEND)


def test_the_lock_refuses_a_link_and_does_not_write_the_pid_into_its_target(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "daemon.lock").symlink_to(victim)
    lock = InstanceLock(state)
    with pytest.raises(GpumgrError) as caught:
        lock.acquire()
    assert str(caught.value).startswith(f"{state / 'daemon.lock'} is a symbolic link")
    assert victim.read_bytes() == SECRET


def test_an_engine_log_that_is_a_link_is_refused_and_never_rotated(tmp_path: Path) -> None:
    victim = tmp_path / "big"
    victim.write_bytes(b"x" * 4096)
    path = logs.log_path(tmp_path / "log", "qwen")
    path.parent.mkdir()
    path.symlink_to(victim)
    assert not logs.rotate_before_start(path, max_bytes=10, backups=2)
    assert not logs.rotate_live(path, max_bytes=10, backups=2)
    with pytest.raises(RefusedPath, match="qwen.log is a symbolic link"):
        logs.open_for_child(path)
    assert logs.tail_lines(path) == []  # a link is not read either
    assert victim.read_bytes() == b"x" * 4096 and path.is_symlink()


def test_live_rotation_replaces_a_link_at_the_backup_name_instead_of_writing_through_it(
    tmp_path: Path,
) -> None:
    victim = _victim(tmp_path)
    path = tmp_path / "qwen.log"
    path.write_bytes(b"line\n" * 100)
    (tmp_path / "qwen.log.1").symlink_to(victim)
    assert logs.rotate_live(path, max_bytes=10, backups=1)
    assert victim.read_bytes() == SECRET
    assert (tmp_path / "qwen.log.1").read_bytes() == b"line\n" * 100
    assert path.read_bytes() == b""


def test_a_second_holder_of_the_runtime_dir_is_refused_naming_the_first(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    first = DaemonLocks(tmp_path / "state-a", runtime)
    first.acquire()
    try:
        code = (
            "import sys; from pathlib import Path; from gpumgr.instance_lock import DaemonLocks\n"
            "try:\n"
            f"    DaemonLocks(Path({str(tmp_path / 'state-b')!r}), Path({str(runtime)!r})).acquire()\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e); sys.exit(1)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=30)  # fmt: skip
        assert done.returncode == 1
        assert done.stdout.startswith(
            f"AlreadyRunning another gpumgr daemon (pid {os.getpid()}) is running on "
            f"runtime_dir {runtime}"
        ), done.stdout + done.stderr
        # the second released its state_dir lock on the way out: a third may take it
        third = InstanceLock(tmp_path / "state-b")
        third.acquire()
        third.release()
    finally:
        first.release()


def test_one_directory_for_state_and_runtime_is_locked_once(tmp_path: Path) -> None:
    locks = DaemonLocks(tmp_path / "both", tmp_path / "both")
    locks.acquire()
    try:
        with pytest.raises(AlreadyRunning):
            InstanceLock(tmp_path / "both").acquire()
    finally:
        locks.release()


@pytest.mark.parametrize("role", ["state_dir", "runtime_dir", "log_dir"])
def test_a_file_where_a_directory_should_be_is_one_line_naming_it(tmp_path: Path, role: str) -> None:
    dirs = {r: tmp_path / r for r in ("state_dir", "runtime_dir", "log_dir")}
    dirs[role].write_text("not a directory\n")
    with pytest.raises(GpumgrError) as caught:
        ensure_writable(dirs)
    said = str(caught.value)
    assert said.startswith(f"{role} {dirs[role]} is not writable (")
    assert "a file is in the way: remove it" in said and "\n" not in said


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, timeout=30).returncode == 0  # fmt: skip


def test_a_full_state_dir_is_one_line_naming_it_and_the_fix(tmp_path: Path) -> None:
    state = tmp_path / "state"
    if not _tmpfs(state, "64k"):
        pytest.skip("needs root and `mount -t tmpfs` for a full disk")
    try:
        fd = os.open(state / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (4096, 1):
                with pytest.raises(OSError) as full:
                    while True:
                        os.write(fd, b"\0" * size)
                assert full.value.errno == errno.ENOSPC
        finally:
            os.close(fd)
        with pytest.raises(GpumgrError) as caught:
            ensure_writable({"state_dir": state})
        assert str(caught.value).startswith(f"state_dir {state} is not writable (No space left")
        assert "free space on its filesystem" in str(caught.value)
        assert sorted(p.name for p in state.iterdir()) == ["filler"]  # no probe left behind
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True, timeout=30)
