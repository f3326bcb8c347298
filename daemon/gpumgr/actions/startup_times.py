"""How long each engine took to start last time, kept in ``<state_dir>/startup.json``.

A cold vLLM start takes 1-3 minutes; an operator (and a router) would rather read "loading 12 s
of ~41 s" than a connection error. The expected time is the engine's own last measured start
(spawn to ``/health`` 200), so it follows the model, the card and the disk of this box.

Each number read back is checked (``gpumgr.state_numbers``): positive, finite, at most a day.
Anything else (``Infinity``, ``1e308``, ``NaN``, a string) is ignored with a log line; a bad
file never raises, here or in the status flushes that read the expected time.
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from gpumgr.state_numbers import number_in
from gpumgr.supervisor.system import REAL, System

log = structlog.get_logger(__name__)

STARTUP_FILE = "startup.json"
WAKE_KEY = "{}:wake"
"""The key of a backend's last measured wake (a provider name has no colon): a sleeping engine
wakes in seconds where it cold-starts in minutes, so a wake is announced with its own time."""
MAX_STARTUP_S = 24 * 3600.0
"""A start measured (or read back) as longer than a day is not a start time."""


class StartupTimes:
    def __init__(self, state_dir: Path, system: System = REAL) -> None:
        self.path = state_dir / STARTUP_FILE
        self._system = system
        self._seconds: dict[str, float] = self._load()

    def _load(self) -> dict[str, float]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("startup_times.unreadable", path=str(self.path), error=str(exc))
            return {}
        if not isinstance(raw, dict):
            log.warning("startup_times.unreadable", path=str(self.path),
                        error="expected an object of backend: seconds")
            return {}
        seconds: dict[str, float] = {}
        for backend, value in raw.items():
            number = number_in(value, 0.0, MAX_STARTUP_S, low_open=True)
            if number is None:
                log.warning("startup_times.ignored", path=str(self.path), backend=backend[:80],
                            value=repr(value)[:80])
                continue
            seconds[backend] = number
        return seconds

    def expected_s(self, backend: str) -> float | None:
        return self._seconds.get(backend)

    def expected_wake_s(self, backend: str) -> float | None:
        """The last measured wake of ``backend`` (``/wake_up`` to its first token); None until
        one was measured: the hold of the router's callback needs a known, short ``eta_s``."""
        return self._seconds.get(WAKE_KEY.format(backend))

    def record_wake(self, backend: str, seconds: float) -> None:
        self.record(WAKE_KEY.format(backend), seconds)

    def record(self, backend: str, seconds: float) -> None:
        """Remember one measured start (blocking: it fsyncs; a failed write is only logged)."""
        if number_in(seconds, 0.0, MAX_STARTUP_S, low_open=True) is None:
            log.warning("startup_times.ignored", backend=backend, value=repr(seconds)[:80])
            return
        self._seconds[backend] = round(seconds, 2)
        try:
            self._system.write_atomic(self.path, json.dumps(self._seconds, indent=2).encode())
        except OSError as exc:
            log.warning("startup_times.write_failed", path=str(self.path), error=str(exc))
