"""One daemon per state directory.

Two daemons on one state directory would adopt each other's engines and stop them on exit. The
first takes an exclusive ``flock`` on ``<state_dir>/daemon.lock`` and writes its pid there; a
second one finds the lock taken and stops before touching anything, naming the holder. The
kernel drops the lock when the holder dies, however it dies, so a stale file never blocks.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gpumgr.errors import GpumgrError

LOCK_FILE = "daemon.lock"


class AlreadyRunning(GpumgrError):
    """Another daemon holds the state directory."""


class InstanceLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``AlreadyRunning`` with the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another gpumgr daemon (pid {holder}) is running on {self.path.parent}; "
                "stop it first, or give this one its own state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
