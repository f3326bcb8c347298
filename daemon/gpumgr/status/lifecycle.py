"""Lifecycle observations from what the status wiring already sees (issue 20).

The state machine's transitions, the supervisor's events and the probes' results are enough to
know how long a drain, a start or a detection took, why an engine restarted, and how long each
backend spent in each state: nothing in ``gpumgr.actions`` needs a hook for it. This module turns
those inputs into observations on ``LifecycleMetrics``; it keeps only the few timestamps it
needs (when a state was entered, the last good probe, the last exit) and never decides anything.

Definitions, as ``docs/monitoring.md`` states them:

- death detection: from the backend's last good probe to the status leaving ``up`` because its
  process exited (the supervisor sees the exit at once; the figure is bounded by the probe
  interval plus that reaction);
- hang detection: from the last good probe to probes taking the backend ``down`` while no exit
  was seen (the hysteresis of ``retry_attempts``);
- restart reasons: ``oom`` (the exit's log says out of memory), ``hang`` (gpumgr stopped it as
  unresponsive), ``crash`` (any other exit), ``reload`` (its launch identity changed);
- start-time estimate error: the real time from ``starting`` to ``up`` minus the expected start
  announced when it began (what ``eta_s`` counted down from).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from gpumgr.backend_state import BackendState
from gpumgr.health.machine import Transition
from gpumgr.status.metrics import LifecycleMetrics
from gpumgr.supervisor.events import ChildExited, ChildReady, ChildStarted, Restarting, SupervisorEvent

SERVING = frozenset({"up", "degraded"})
"""States in which the backend took requests (``degraded`` still serves)."""


class LifecycleTracker:
    def __init__(self, metrics: LifecycleMetrics, clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self._clock = clock
        self._entered: dict[str, tuple[str, float]] = {}
        self._spent: dict[tuple[str, str], float] = {}
        self._last_ok: dict[str, float] = {}
        self._last_exit: dict[str, ChildExited] = {}
        self._starting: dict[str, tuple[float, float | None]] = {}
        self._adopted: set[str] = set()
        self._in_event: str | None = None

    # -- inputs ------------------------------------------------------------------------------
    def seed(self, backend: str, state: BackendState | str, since: float) -> None:
        """A backend's state when the tracker first hears of it (daemon start, a reload)."""
        self._entered.setdefault(backend, (str(state), since))
        self._metrics.know_backend(backend)

    def probe_ok(self, backend: str, at: float) -> None:
        self._last_ok[backend] = at

    def before_event(self, event: SupervisorEvent) -> None:
        """Called before the event moves the state machine (its transitions are then the
        supervisor's, not the probes')."""
        self._in_event = event.backend
        if isinstance(event, ChildExited):
            self._last_exit[event.backend] = event
        elif isinstance(event, Restarting):
            self._metrics.count_restart(event.backend, self._restart_reason(event))
        elif isinstance(event, ChildStarted):
            if event.adopted:
                self._adopted.add(event.backend)
            else:
                self._adopted.discard(event.backend)
        elif isinstance(event, ChildReady) and not event.adopted:
            self._metrics.observe_cold_start(event.backend, event.startup_s)

    def after_event(self, event: SupervisorEvent) -> None:
        self._in_event = None

    def _restart_reason(self, event: Restarting) -> str:
        exited = self._last_exit.pop(event.backend, None)
        if exited is not None and exited.oom:
            return "oom"
        if exited is not None and exited.last_error.startswith("unresponsive"):
            return "hang"
        return "crash"

    def reloaded(self, restarted: Iterable[str]) -> None:
        """A reload restarted these engines (their launch identity changed)."""
        for name in restarted:
            self._metrics.count_restart(name, "reload")

    def transition(self, t: Transition, estimate_s: float | None) -> None:
        """One state change; ``estimate_s``: the expected start announced when ``t`` enters
        ``starting`` (None when unknown)."""
        old, new = str(t.old), str(t.new)
        state, since = self._entered.get(t.backend, (old, t.at))
        key = (t.backend, state)
        self._spent[key] = self._spent.get(key, 0.0) + max(0.0, t.at - since)
        self._entered[t.backend] = (new, t.at)

        if old == "draining":
            self._metrics.observe_drain(t.backend, t.at - since)
        if old in SERVING and new not in SERVING:
            last_ok = self._last_ok.get(t.backend)
            exited = self._in_event == t.backend and t.backend in self._last_exit
            if last_ok is not None and (exited or new == "down"):
                kind = "death" if exited else "hang"
                self._metrics.observe_detection(t.backend, kind, t.at - last_ok)
        if new == "starting":
            if old == "sleeping" or t.backend in self._adopted:
                self._starting.pop(t.backend, None)
            else:
                self._starting[t.backend] = (t.at, estimate_s)
        elif old == "starting":
            began = self._starting.pop(t.backend, None)
            if new in SERVING and began is not None and began[1]:
                self._metrics.observe_start_estimate(t.backend, began[1], t.at - began[0])

    def forget(self, backend: str) -> None:
        for store in (self._entered, self._last_ok, self._last_exit, self._starting):
            store.pop(backend, None)
        self._spent = {k: v for k, v in self._spent.items() if k[0] != backend}
        self._adopted.discard(backend)
        self._metrics.forget_backend(backend)

    # -- reading -----------------------------------------------------------------------------
    def state_seconds(self, now: float | None = None) -> dict[tuple[str, str], float]:
        """Seconds per (backend, state), the current stay included (monotone between scrapes)."""
        now = self._clock() if now is None else now
        out = dict(self._spent)
        for backend, (state, since) in self._entered.items():
            out[(backend, state)] = out.get((backend, state), 0.0) + max(0.0, now - since)
        return {k: round(v, 3) for k, v in out.items()}
