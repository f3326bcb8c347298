"""Supervisor events → backend states: the daemon plugs ``apply_supervisor_event`` into its sink.

A process that exits is ``down`` at once (no probe needed), ``restarting`` when the restart
policy schedules another try, ``failed`` when it gives up. ``ChildReady`` only triggers a probe:
the supervisor checked ``/health``, but ``up`` also needs the right model on the port, which the
probe checks. An event the current state does not allow is logged at error level and dropped
here, at the edge, so that one bookkeeping slip never kills the supervisor's loop.
"""

from __future__ import annotations

import structlog

from typing import Protocol

from gpumgr.backend_state import BackendState as S
from gpumgr.health.machine import KEEP, IllegalTransition, Transition, _Keep
from gpumgr.supervisor.events import (
    BackendDown,
    BackendFailed,
    BackendStopped,
    ChildExited,
    ChildReady,
    ChildStarted,
    ChildStopped,
    ChildStopping,
    Downloading,
    Draining,
    KvCacheMeasured,
    OllamaEvicted,
    Restarting,
    Sleeping,
    SupervisorEvent,
    Woken,
)

log = structlog.get_logger(__name__)


class StateOwner(Protocol):
    """What owns the states (the ``HealthScheduler``; a small fake in keeper tests)."""

    def lifecycle(
        self, name: str, target: S, reason: str, pid: int | None | _Keep = KEEP
    ) -> Transition | None: ...

    def process_exited(self, name: str, restarting: bool, reason: str) -> Transition | None: ...

    def request_probe(self, name: str) -> None: ...

    def kv_measured(self, name: str, shortfall: str) -> Transition | None: ...


def _exit_reason(e: ChildExited) -> str:
    code = "killed" if e.returncode is None else (
        f"killed by signal {-e.returncode}" if e.returncode < 0 else f"exit {e.returncode}"
    )
    why = "out of memory: " if e.oom else ""
    return f"process {e.pid} {code}" + (f": {why}{e.last_error}" if e.last_error else "")


def apply_supervisor_event(sched: StateOwner, event: SupervisorEvent) -> Transition | None:
    """Move the event's backend; returns the transition (already logged and published).

    Events that name a process carry its pid into the same step as the state, so the status
    never shows a new state with the old pid (or ``up`` with no pid)."""
    name = event.backend
    try:
        if isinstance(event, ChildStarted):
            how = "adopted" if event.adopted else "spawned"
            return sched.lifecycle(name, S.STARTING, f"{how} pid {event.pid}", pid=event.pid)
        if isinstance(event, ChildReady):
            sched.request_probe(name)
            return None
        if isinstance(event, ChildExited):
            return sched.process_exited(name, restarting=False, reason=_exit_reason(event))
        if isinstance(event, Restarting):
            why = f": {event.reason}" if event.reason else ""
            return sched.lifecycle(
                name, S.RESTARTING, f"restart #{event.attempt} in {event.delay_s:g} s{why}",
                pid=None,
            )
        if isinstance(event, BackendFailed):
            return sched.lifecycle(name, S.FAILED, event.detail, pid=None)
        if isinstance(event, BackendDown):
            return sched.lifecycle(name, S.DOWN, event.detail)
        if isinstance(event, ChildStopping):
            return sched.lifecycle(name, S.STOPPING, f"stopping pid {event.pid}", pid=event.pid)
        if isinstance(event, ChildStopped):
            how = "killed" if event.killed else "stopped"
            note = "" if event.memory_released else ", GPU memory not yet released"
            return sched.lifecycle(name, S.STOPPED, f"pid {event.pid} {how}{note}", pid=None)
        if isinstance(event, BackendStopped):
            return sched.lifecycle(name, S.STOPPED, event.reason, pid=None)
        if isinstance(event, Downloading):
            return sched.lifecycle(name, S.DOWNLOADING, event.detail)
        if isinstance(event, Draining):
            return sched.lifecycle(name, S.DRAINING, f"draining pid {event.pid}", pid=event.pid)
        if isinstance(event, Sleeping):
            return sched.lifecycle(
                name, S.SLEEPING, event.detail or f"pid {event.pid} asleep", pid=event.pid
            )
        if isinstance(event, KvCacheMeasured):
            return sched.kv_measured(name, event.shortfall)
        if isinstance(event, OllamaEvicted):
            return None  # no state of its own: the status shows those Ollama models unavailable
        if isinstance(event, Woken):
            return sched.lifecycle(name, S.STARTING, f"pid {event.pid} woken", pid=event.pid)
    except IllegalTransition as exc:
        log.error("backend.illegal_transition", backend=name, kind=type(event).__name__,
                  detail=str(exc))
    except KeyError:
        log.error("backend.unknown", backend=name, kind=type(event).__name__)
    return None
