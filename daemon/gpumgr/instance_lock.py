"""The daemon's directories at start: one daemon per state and runtime directory, all writable.

Two daemons on one state directory would adopt each other's engines and stop them on exit; two
on one runtime directory would fight over the control socket (the second takes it over and
deletes it when it exits). The first daemon takes an exclusive ``flock`` on
``<state_dir>/daemon.lock``, then on ``<runtime_dir>/daemon.lock``, and writes its pid into
each; a second one finds a lock taken and stops before touching anything, naming the holder.
The kernel drops the lock when the holder dies, however it dies, so a stale file never blocks.

The lock file is opened without following a symbolic link (``gpumgr.fsio.open_nofollow``): the
daemon truncates it and writes its pid there, and a link planted at that name must not make it
overwrite the file the link points to.

``ensure_writable`` then proves every directory the daemon writes can be written (a small probe
file, written and removed): a full disk, a read-only mount or a file where the directory should
be ends the start with one line naming the directory and the fix, not a bare ``Errno`` later.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Mapping
from pathlib import Path

from gpumgr.errors import GpumgrError
from gpumgr.fsio import RefusedPath, open_nofollow, write_atomic

LOCK_FILE = "daemon.lock"


class AlreadyRunning(GpumgrError):
    """Another daemon holds the state (or runtime) directory."""


class InstanceLock:
    """An exclusive lock on ``<directory>/daemon.lock`` held for the daemon's lifetime.

    ``role`` names the directory in messages (``state_dir``, ``runtime_dir``)."""

    def __init__(self, directory: Path, role: str = "state_dir") -> None:
        self.path = directory / LOCK_FILE
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``AlreadyRunning`` with the holder's pid (``GpumgrError`` when
        the directory cannot be created or the lock file is a link)."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        except RefusedPath as exc:
            raise GpumgrError(str(exc)) from None
        except OSError as exc:
            raise GpumgrError(_unwritable(self.role, directory, exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another gpumgr daemon (pid {holder}) is running on {self.role} {directory}; "
                f"stop it first, or give this one its own {self.role}"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise GpumgrError(_unwritable(self.role, directory, exc)) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class DaemonLocks:
    """``<state_dir>/daemon.lock`` then ``<runtime_dir>/daemon.lock`` (one lock when both are the
    same directory): taken before the control socket or any state file is touched."""

    def __init__(self, state_dir: Path, runtime_dir: Path) -> None:
        self.state = InstanceLock(state_dir, "state_dir")
        same = os.path.realpath(state_dir) == os.path.realpath(runtime_dir)
        self.runtime = None if same else InstanceLock(runtime_dir, "runtime_dir")

    def acquire(self) -> None:
        self.state.acquire()
        if self.runtime is not None:
            try:
                self.runtime.acquire()
            except BaseException:
                self.state.release()
                raise

    def release(self) -> None:
        if self.runtime is not None:
            self.runtime.release()
        self.state.release()


PROBE_FILE = ".gpumgr-write-probe"


def ensure_writable(
    dirs: Mapping[str, Path], *, create_only: Mapping[str, Path] | None = None
) -> None:
    """Create each directory (role → path) and prove a file can be written there; else
    ``GpumgrError`` naming the role, the path and the fix. ``create_only`` directories are
    created but not probed (the weights cache: a full one must not stop serving what is there).
    """
    for role, directory in {**dirs, **(create_only or {})}.items():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not directory.is_dir():  # a link to a file, say
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            if role not in dirs:
                continue
            probe = directory / PROBE_FILE
            write_atomic(probe, b"gpumgr\n", mode=0o600)
            probe.unlink()
        except OSError as exc:
            raise GpumgrError(_unwritable(role, directory, exc)) from None


def _unwritable(role: str, directory: Path, exc: OSError) -> str:
    env = f"GPUMGR_{role.upper()}"
    elsewhere = f"or set {role} (gpumgr.yaml, or ${env}) to a writable directory"
    fixes = {
        errno.ENOSPC: f"free space on its filesystem {elsewhere}",
        errno.EDQUOT: f"raise the quota or free space {elsewhere}",
        errno.EROFS: f"it is on a read-only filesystem: remount it read-write {elsewhere}",
        errno.ENOTDIR: f"a file is in the way: remove it {elsewhere}",
        errno.EEXIST: f"a file is in the way: remove it {elsewhere}",
        errno.EACCES: f"give the daemon's user write access {elsewhere}",
        errno.EPERM: f"give the daemon's user write access {elsewhere}",
    }
    fix = fixes.get(exc.errno or 0, elsewhere.removeprefix("or "))
    return f"{role} {directory} is not writable ({exc.strerror or exc}); {fix}"
