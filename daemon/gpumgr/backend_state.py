"""The states a backend can be in (DESIGN.md §5). Nothing but the states lives here.

The transitions between them are in ``gpumgr.health.machine``; this module is imported by both
the state machine and the status document so that neither depends on the other.
"""

from __future__ import annotations

from enum import StrEnum


class BackendState(StrEnum):
    STOPPED = "stopped"
    DOWNLOADING = "downloading"
    STARTING = "starting"
    UP = "up"
    DEGRADED = "degraded"
    """Serving, but with less than the plan promised (a vLLM >= 0.34 engine that committed a
    smaller KV cache than planned after warm-up). Not ``available``: a router uses it only when
    nothing else remains (DESIGN.md §5)."""
    DRAINING = "draining"
    STOPPING = "stopping"
    SLEEPING = "sleeping"
    DOWN = "down"
    RESTARTING = "restarting"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"
    AUTH_FAILED = "auth_failed"
    DISABLED = "disabled"
    UNKNOWN = "unknown"

    @property
    def available(self) -> bool:
        """Only an ``up`` backend takes requests."""
        return self is BackendState.UP
