"""How long each engine took to start last time, kept in ``<state_dir>/startup.json``.

A cold vLLM start takes 1-3 minutes; an operator (and a router) would rather read "loading 12 s
of ~41 s" than a connection error. The expected time is the engine's own last measured start
(spawn to ``/health`` 200), so it follows the model, the card and the disk of this box.
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from gpumgr.supervisor.system import REAL, System

log = structlog.get_logger(__name__)

STARTUP_FILE = "startup.json"


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
            return {}
        return {k: float(v) for k, v in raw.items()
                if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                and v > 0}

    def expected_s(self, backend: str) -> float | None:
        return self._seconds.get(backend)

    def record(self, backend: str, seconds: float) -> None:
        """Remember one measured start (blocking: it fsyncs; a failed write is only logged)."""
        self._seconds[backend] = round(seconds, 2)
        try:
            self._system.write_atomic(self.path, json.dumps(self._seconds, indent=2).encode())
        except OSError as exc:
            log.warning("startup_times.write_failed", path=str(self.path), error=str(exc))
