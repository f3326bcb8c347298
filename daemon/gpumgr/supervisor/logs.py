"""Per-child log files: ``<log_dir>/<backend>.log``, size-rotated, written by the child itself.

The child's stdout and stderr are the log file, opened with ``O_APPEND`` and inherited (no pipe
through the daemon), so a child keeps logging when the daemon crashes. Rotation therefore never
renames a file a child is writing to: before a start the old file is rotated by renaming; while a
child runs it is rotated by copy-truncate (``O_APPEND`` writes land at the new end).

The daemon never writes through a symbolic link here (``gpumgr.fsio.open_nofollow``): a link
planted at ``<backend>.log`` is refused with a line naming it, and a link is never rotated, so
its target is never truncated or appended to.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from gpumgr.fsio import open_nofollow

_TAIL_READ_BYTES = 64 * 1024


def log_path(log_dir: Path, backend: str) -> Path:
    return log_dir / f"{backend}.log"


def _shift_backups(path: Path, backups: int) -> None:
    """``x.log.(n-1)`` → ``x.log.n`` … ``x.log.1`` → ``x.log.2``; the oldest falls off."""
    for i in range(backups - 1, 0, -1):
        src = path.with_name(f"{path.name}.{i}")
        if src.exists():
            os.replace(src, path.with_name(f"{path.name}.{i + 1}"))


def _regular_size(path: Path) -> int | None:
    """The size of the regular file at ``path``; None when absent, a link or anything else
    (those are refused by ``open_for_child``, never rotated)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def rotate_before_start(path: Path, max_bytes: int, backups: int) -> bool:
    """Rename a too-large log out of the way before a new child opens it. True if rotated."""
    size = _regular_size(path)
    if size is None or size < max_bytes:
        return False
    if backups <= 0:
        path.unlink(missing_ok=True)
        return True
    _shift_backups(path, backups)
    os.replace(path, path.with_name(f"{path.name}.1"))
    return True


def rotate_live(path: Path, max_bytes: int, backups: int) -> bool:
    """Copy-truncate a log a running child appends to. True if rotated.

    Lines written between the copy and the truncate are lost; that is the accepted price of
    never piping a child's output through the daemon.
    """
    size = _regular_size(path)
    if size is None or size < max_bytes:
        return False
    fd = open_nofollow(path, os.O_RDWR)
    try:
        if backups > 0:
            _shift_backups(path, backups)
            _copy_to_new_file(fd, path.with_name(f"{path.name}.1"))
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    return True


def _copy_to_new_file(src_fd: int, dest: Path) -> None:
    """Copy ``src_fd`` into a fresh file renamed onto ``dest`` (a link there is replaced, never
    written through)."""
    tmp_fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(tmp_fd, 0o640)
            offset = 0
            while chunk := os.pread(src_fd, 1 << 20, offset):
                offset += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(tmp_fd, view):]
        finally:
            os.close(tmp_fd)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_for_child(path: Path) -> int:
    """An ``O_APPEND`` descriptor for a child's stdout/stderr (close it after the spawn).

    Raises ``gpumgr.fsio.RefusedPath`` when ``path`` is a symbolic link or not a regular file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)


def tail_lines(path: Path, n: int = 20, *, since_offset: int = 0) -> list[str]:
    """The last ``n`` non-empty lines of the log, read from at most the last 64 KiB and never
    from before ``since_offset`` (the size when the current child started). A symbolic link
    there is not read (its target could be any file the daemon can read)."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            end = f.seek(0, os.SEEK_END)
            if end < since_offset:  # truncated by rotation since: read it all
                since_offset = 0
            start = max(since_offset, end - _TAIL_READ_BYTES)
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return []
        raise
    lines = [ln.rstrip() for ln in data.decode("utf-8", "replace").splitlines()]
    return [ln for ln in lines if ln][-n:]


def last_error(lines: list[str]) -> str:
    """The line an operator wants in ``detail``: the last one that looks like an error, else the
    last line. vLLM ends a failure with ``SomeError: message`` after the traceback."""
    markers = ("Error", "error", "Exception", "FAILED", "Killed", "out of memory")
    for line in reversed(lines):
        if any(m in line for m in markers):
            return line.strip()
    return lines[-1].strip() if lines else ""
