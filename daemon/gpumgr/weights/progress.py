"""Download progress as plain values, and the adapter that gets them out of huggingface_hub.

The daemon feeds ``DownloadProgress`` into a backend's ``downloading`` state (``detail`` shows
``percent``); the CLI draws a progress bar from it. ``huggingface_hub`` only reports progress
through a tqdm-shaped class, so ``tqdm_adapter`` builds one that renders nothing and forwards the
bytes written to disk to a ``ProgressMeter``, which rate-limits callbacks and derives the rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PHASE_WAITING = "waiting"  # another process holds this repository's download lock
PHASE_DOWNLOADING = "downloading"
PHASE_VERIFYING = "verifying"
PHASE_DONE = "done"


@dataclass(frozen=True)
class DownloadProgress:
    """Where one repository's download stands. ``total_bytes`` is what this pull must fetch."""

    repo: str
    phase: str
    done_bytes: int
    total_bytes: int
    rate_bytes_per_s: float | None = None

    @property
    def percent(self) -> float:
        if self.total_bytes <= 0:
            return 100.0 if self.phase == PHASE_DONE else 0.0
        return min(100.0, 100.0 * self.done_bytes / self.total_bytes)

    @property
    def eta_s(self) -> float | None:
        if not self.rate_bytes_per_s or self.total_bytes <= 0:
            return None
        return max(0.0, (self.total_bytes - self.done_bytes) / self.rate_bytes_per_s)

    def detail(self) -> str:
        """A short text for a backend's ``detail`` field: ``downloading 42% of 5.2 GiB``."""
        if self.phase == PHASE_DOWNLOADING:
            return f"downloading {self.percent:.0f}% of {format_bytes(self.total_bytes)}"
        if self.phase == PHASE_WAITING:
            return "waiting for another download of the same repository"
        return self.phase


ProgressCallback = Callable[[DownloadProgress], None]


def format_bytes(n: float) -> str:
    """Binary units, one decimal: ``5.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - loop always returns


class ProgressMeter:
    """Accumulates bytes from the download threads; calls back at most every ``interval_s``.

    ``clock`` is injectable so tests decide what time it is.
    """

    def __init__(
        self, repo: str, total_bytes: int, callback: ProgressCallback | None,
        *, interval_s: float = 0.25, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repo = repo
        self.total_bytes = total_bytes
        self._callback = callback
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._done = 0
        self._started = clock()
        self._last_emit = float("-inf")

    @property
    def done_bytes(self) -> int:
        with self._lock:
            return self._done

    def _rate(self, now: float) -> float | None:
        elapsed = now - self._started
        return self._done / elapsed if elapsed > 0 and self._done > 0 else None

    def add(self, n: int) -> None:
        now = self._clock()
        with self._lock:
            self._done = max(0, self._done + n)
            if now - self._last_emit < self._interval_s:
                return
            self._last_emit = now
            event = DownloadProgress(self.repo, PHASE_DOWNLOADING, self._done, self.total_bytes,
                                     self._rate(now))
        self._emit(event)

    def phase(self, phase: str) -> None:
        """Report a phase change now (not rate-limited)."""
        now = self._clock()
        with self._lock:
            done = self.total_bytes if phase == PHASE_DONE else self._done
            event = DownloadProgress(self.repo, phase, done, self.total_bytes, self._rate(now))
        self._emit(event)

    def _emit(self, event: DownloadProgress) -> None:
        if self._callback is not None:
            self._callback(event)


def tqdm_adapter(meter: ProgressMeter) -> type[Any]:
    """A tqdm-shaped class for ``snapshot_download(tqdm_class=...)`` that feeds ``meter``.

    snapshot_download opens three bars with this class: a file counter, a network "transfer" bar
    and a "Reconstructing" bar of bytes written to disk; both byte bars see the same bytes for
    plain HTTP downloads, so only the bytes-written bar is counted.
    """

    class _MeterBar:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.desc = str(kwargs.get("desc") or "")
            self.total = kwargs.get("total")
            self.n = int(kwargs.get("initial") or 0)
            self._counts = kwargs.get("unit") == "B" and self.desc.startswith("Reconstructing")
            if self._counts and self.n:
                meter.add(self.n)

        def update(self, n: float | None = 1) -> None:
            inc = int(n or 0)
            self.n += inc
            if self._counts:
                meter.add(inc)

        @property
        def format_dict(self) -> dict[str, Any]:
            return {"n": self.n, "total": self.total, "rate": None}

        def __enter__(self) -> _MeterBar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def __getattr__(self, name: str) -> Callable[..., None]:
            # close, refresh, set_description, set_postfix_str, clear ...: nothing to draw
            return lambda *a, **k: None

    return _MeterBar
