"""``<runtime_dir>/status.json``: atomic replacement, written off the event loop.

A reader must never see half a document, so each version is written to a temporary file in the
same directory, fsync'd, and renamed over the old one (``gpumgr.fsio.write_atomic``). The
writes happen in one background thread so that an fsync on a slow disk never stalls the event
loop that serves probes and HTTP; when changes arrive faster than the disk takes them, the
writer skips to the newest version (the file is a snapshot, not a log).
"""

from __future__ import annotations

import threading
from pathlib import Path

import structlog

from gpumgr.fsio import write_atomic

log = structlog.get_logger(__name__)


class CoalescingFileWriter:
    """Writes the newest offered version of a file in a background thread.

    ``offer`` never blocks on the disk; ``flush`` waits until the newest offered version is on
    disk (used at shutdown and by tests that inspect the file).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._pending: bytes | None = None
        self._offered = 0
        self._written = 0
        self._closed = False
        self._failing = False
        self._thread: threading.Thread | None = None
        self.writes = 0
        """How many versions reached the disk (fewer than offered under a burst)."""

    def offer(self, data: bytes) -> None:
        with self._cond:
            if self._closed:
                return
            self._pending = data
            self._offered += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gpumgr-status-file", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything offered so far is written (or failed); False on timeout."""
        with self._cond:
            target = self._offered
            return self._cond.wait_for(lambda: self._written >= target, timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write the last offered version, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                data, self._pending = self._pending, None
                generation = self._offered
                if data is None:  # closed and nothing left
                    return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, data)
                self.writes += 1
                if self._failing:
                    log.info("status.file_write_recovered", path=str(self.path))
                    self._failing = False
            except OSError as exc:
                if not self._failing:  # one line per outage, not one per change
                    log.error("status.file_write_failed", path=str(self.path), error=str(exc))
                    self._failing = True
            with self._cond:
                self._written = generation
                self._cond.notify_all()
