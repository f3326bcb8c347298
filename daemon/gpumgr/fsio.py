"""The package's file-writing primitives: one atomic replace, one no-follow open.

A leaf module (it imports nothing of gpumgr) so that every layer, from the simulated GPU to the
status writer, can use the same two functions:

- ``write_atomic``: a reader (or a crash) sees the old file or the new one, never half of one,
  and the new one survives a power cut once the call returns: temporary file in the same
  directory, fsync of the file, ``os.replace``, fsync of the directory (the rename itself lives
  in the directory's metadata; without the last fsync it can be lost with the power).
- ``open_nofollow``: files the daemon opens for writing by a fixed name (its lock, the engines'
  logs) are never reached through a symbolic link. A link planted there would otherwise make
  the daemon (often root) truncate or append to whatever file it points at.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


class RefusedPath(OSError):
    """A path the daemon writes to is a symbolic link (or not a regular file); the message
    names the path and the fix."""

    def __str__(self) -> str:
        return str(self.strerror)


def fsync_dir(directory: Path) -> None:
    """Make a rename or creation in ``directory`` durable (a no-op where directories cannot be
    opened for fsync)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # filesystems without directory fsync
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the file gets ``mode``.

    Raises ``OSError`` (disk full, read-only, a file where the directory should be); the
    temporary file is removed and ``path`` is left as it was. The parent directory must exist:
    creating it is the caller's decision (and its error message).
    """
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(directory)


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (``O_NOFOLLOW | O_CLOEXEC``).

    Raises ``RefusedPath`` naming the path (the link's target is not touched), or the
    ``OSError`` of the open itself. The opened object must also be a regular file: a FIFO or a
    device at a log's name is refused the same way, before anything is written to it.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RefusedPath(
                errno.ELOOP, f"{path} is a symbolic link; gpumgr does not write through links "
                "(remove it and let gpumgr create the file)"
            ) from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads
            raise _not_regular(path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_regular(path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_regular(path: Path) -> RefusedPath:
    return RefusedPath(
        errno.EINVAL, f"{path} is not a regular file; gpumgr writes only regular files there "
        "(remove it and let gpumgr create the file)"
    )
