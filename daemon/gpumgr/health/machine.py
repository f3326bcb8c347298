"""The backend state machine: pure functions from (health, event, time) to (health, transition).

Two kinds of events move a backend. Probe verdicts, with hysteresis: a backend goes ``down`` only
after ``retry_attempts`` consecutive failures (one slow answer must not make the router drop a
healthy server) and ``up`` after one success (a recovered server is used at once). And lifecycle
events from the supervisor/actions, applied at once: a process that exited is ``down`` (or
``restarting``) now, without waiting for probes to notice. A lifecycle change that cannot happen
(``stopped`` → ``draining``, anything out of ``disabled``) raises ``IllegalTransition``: a caller
that asks for it has lost track of the process, and muddling on would publish a lie.

No clock, no I/O: the caller passes ``at`` and logs/publishes the returned ``Transition`` once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from gpumgr.backend_state import BackendState as S
from gpumgr.errors import GpumgrError


class IllegalTransition(GpumgrError):
    """A lifecycle event that the backend's current state does not allow."""


class Verdict(StrEnum):
    """What a probe means for the machine (mapped from ``engines.ProbeOutcome`` by the caller)."""

    SUCCESS = "success"
    FAILURE = "failure"
    RATE_LIMITED = "rate_limited"
    AUTH_FAILED = "auth_failed"
    ASLEEP = "asleep"


@dataclass(frozen=True)
class BackendHealth:
    """One backend's current state, since when, why, and the failure streak behind hysteresis."""

    name: str
    state: S
    since: float
    reason: str = ""
    consecutive_failures: int = 0
    pid: int | None = None
    """The process serving it, as the supervisor last reported (None: none runs)."""
    restarts: int = 0
    """Times it entered ``restarting``: the one restart counter the status shows."""
    shortfall: str = ""
    """Why the running engine serves less than planned (its KV cache reading); not empty: a
    probe success means ``degraded`` instead of ``up``. Cleared when the process goes."""


class _Keep:
    """``pid`` argument meaning "leave it as it is"."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


@dataclass(frozen=True)
class Transition:
    """A state change, for the log line ``backend.state`` and the status publisher."""

    backend: str
    old: S
    new: S
    reason: str
    at: float


@dataclass(frozen=True)
class Step:
    health: BackendHealth
    transition: Transition | None = None


# States where probes are not run: nothing is (or should be) listening, or the state is fixed.
NOT_PROBED = frozenset({S.STOPPED, S.STOPPING, S.DOWNLOADING, S.FAILED, S.DISABLED, S.RESTARTING})
# A probe failure here is expected (the server is not bound yet): the supervisor decides failure.
FAILURES_IGNORED = frozenset({S.STARTING, S.RESTARTING})
WOKEN = " woken"
"""How the reason of a wake's ``starting`` ends (``pid N woken``): the engine answers asleep
until ``/wake_up`` returns, which is not a sleep behind gpumgr's back."""
# A probe success does not override a state the supervisor set deliberately.
SUCCESS_KEEPS = frozenset({S.DRAINING, S.SLEEPING, S.STOPPING, S.STOPPED, S.DISABLED})

_ANY_LIVE = frozenset(
    {S.UNKNOWN, S.STARTING, S.UP, S.DEGRADED, S.DRAINING, S.SLEEPING, S.DOWN, S.RATE_LIMITED,
     S.AUTH_FAILED}
)
# States a new process (or none) starts from: a shortfall measured for the old one is void.
_CLEARS_SHORTFALL = frozenset({S.STARTING, S.STOPPED, S.DOWN, S.RESTARTING, S.FAILED,
                               S.DOWNLOADING})

# Lifecycle targets and the states they may come from. ``up`` is not here: only a probe proves up.
LIFECYCLE_FROM: dict[S, frozenset[S]] = {
    S.DOWNLOADING: frozenset({S.STOPPED, S.FAILED, S.DOWN, S.UNKNOWN, S.RESTARTING}),
    S.STARTING: frozenset(
        {S.STOPPED, S.DOWNLOADING, S.FAILED, S.DOWN, S.RESTARTING, S.UNKNOWN, S.SLEEPING}
    ),
    S.DRAINING: frozenset({S.UP, S.DEGRADED, S.RATE_LIMITED, S.SLEEPING}),
    S.SLEEPING: frozenset({S.UP, S.DEGRADED, S.DRAINING, S.STARTING}),  # starting: adopted asleep
    # from stopped: an engine spawned but not yet announced (its record being written) when
    # the start was abandoned (an operator's timeout): a real process, stopped
    S.STOPPING: _ANY_LIVE | {S.RESTARTING, S.FAILED, S.STOPPED},
    S.STOPPED: _ANY_LIVE | {S.STOPPING, S.DOWNLOADING, S.RESTARTING, S.FAILED},
    S.RESTARTING: (_ANY_LIVE - {S.RATE_LIMITED, S.AUTH_FAILED}) | {S.DOWNLOADING, S.STOPPED},
    S.DOWN: _ANY_LIVE | {S.RESTARTING, S.STOPPED, S.DOWNLOADING, S.FAILED},
    # from stopped: a backend that could not even be prepared (weights, no GPU, no plan)
    S.FAILED: _ANY_LIVE | {S.STOPPED, S.DOWNLOADING, S.RESTARTING, S.STOPPING},
    S.UNKNOWN: frozenset(),
    S.DISABLED: frozenset(),
}


FOREIGN_SLEEP = (
    "asleep, but gpumgr did not put it to sleep (vLLM's /sleep needs no API key: someone on "
    "this host called it); wake it with `gpumgr wake NAME`"
)


def initial(name: str, state: S, at: float, reason: str = "") -> BackendHealth:
    return BackendHealth(name=name, state=state, since=at, reason=reason)


def _move(
    h: BackendHealth,
    new: S,
    reason: str,
    at: float,
    failures: int = 0,
    pid: int | None | _Keep = KEEP,
) -> Step:
    pid_now = h.pid if isinstance(pid, _Keep) else pid
    if new is h.state:
        return Step(replace(h, reason=reason, consecutive_failures=failures, pid=pid_now))
    restarts = h.restarts + (1 if new is S.RESTARTING else 0)
    shortfall = "" if new in _CLEARS_SHORTFALL else h.shortfall
    moved = BackendHealth(h.name, new, at, reason, failures, pid_now, restarts, shortfall)
    return Step(moved, Transition(h.name, h.state, new, reason, at))


NOT_OURS = "answers on its port, but gpumgr cannot prove it started it: not published as up"


def on_probe(
    h: BackendHealth, verdict: Verdict, reason: str, at: float, retry_attempts: int,
    requires_process: bool = False,
) -> Step:
    """Apply one probe verdict. Results that arrive for a state that is not probed are ignored
    (a probe that was in flight when the supervisor stopped the backend). A managed backend
    (``requires_process``) is only ``up`` with an engine gpumgr started: a success with no
    process of ours (records lost, a stranger on the port) proves nothing about it."""
    if h.state in NOT_PROBED:
        return Step(h)
    if verdict is Verdict.SUCCESS:
        if h.state in SUCCESS_KEEPS:
            return Step(replace(h, consecutive_failures=0))
        if requires_process and h.pid is None:
            return Step(replace(h, consecutive_failures=0,
                                reason=h.reason if NOT_OURS in h.reason else f"{h.reason}; {NOT_OURS}"
                                if h.reason else NOT_OURS))
        target = S.DEGRADED if h.shortfall else S.UP
        if h.state is target:
            return Step(replace(h, consecutive_failures=0,
                                reason=h.shortfall if h.shortfall else reason))
        return _move(h, target, h.shortfall or reason, at)
    if verdict is Verdict.ASLEEP:
        if h.state in SUCCESS_KEEPS or (h.state is S.STARTING and h.reason.endswith(WOKEN)):
            return Step(replace(h, consecutive_failures=0))  # gpumgr's own sleep, stop or wake
        return _move(h, S.SLEEPING, FOREIGN_SLEEP, at)
    if verdict is Verdict.RATE_LIMITED:
        return _move(h, S.RATE_LIMITED, reason, at)
    if verdict is Verdict.AUTH_FAILED:
        return _move(h, S.AUTH_FAILED, reason, at)
    # a failure
    if h.state in FAILURES_IGNORED:
        return Step(replace(h, reason=reason))
    failures = h.consecutive_failures + 1
    if h.state is S.DOWN:
        return Step(replace(h, consecutive_failures=failures, reason=reason))
    if failures >= retry_attempts:
        why = reason if retry_attempts == 1 else f"{reason} ({failures} consecutive failures)"
        return _move(h, S.DOWN, why, at, failures)
    return Step(replace(h, consecutive_failures=failures))


def on_lifecycle(
    h: BackendHealth, target: S, reason: str, at: float, pid: int | None | _Keep = KEEP
) -> Step:
    """Apply a supervisor/actions event that puts the backend in ``target`` at once; ``pid``
    is the process the event reports (``None``: no process any more)."""
    if target is h.state:
        return Step(replace(h, reason=reason, pid=h.pid if isinstance(pid, _Keep) else pid))
    allowed = LIFECYCLE_FROM.get(target)
    if allowed is None:
        raise IllegalTransition(f"{h.name}: {target} is set by probes, not by lifecycle events")
    if h.state not in allowed:
        raise IllegalTransition(f"{h.name}: cannot go from {h.state} to {target} ({reason})")
    return _move(h, target, reason, at, pid=pid)


MANAGED_AT_REST = frozenset({S.STOPPED, S.UNKNOWN})
"""The states of a managed backend the reconciler has nothing left to do for (no engine, no
keeper): only from these does a registry change disable it at once."""


def on_registry(h: BackendHealth, seed: S, reason: str, at: float, managed: bool) -> Step:
    """A registry change of whether the backend runs here (``disabled``/``template`` ↔
    ``active``/``standby``): enabled, a disabled backend takes its first state (``seed``);
    disabled, it becomes ``disabled`` once nothing of it is left. A managed one is stopped by
    the reconciler first (its engine, or a keeper that ended ``failed`` or waits, each ending
    ``stopped``); the next call, after that, moves it. So ``disabled`` is always last: never
    ``disabled → stopped``."""
    if seed is S.DISABLED:
        if h.state is S.DISABLED or (managed and h.state not in MANAGED_AT_REST):
            return Step(h)
        return _move(h, S.DISABLED, reason, at, pid=None)
    if h.state is S.DISABLED:
        return _move(h, seed, reason, at, pid=None)
    return Step(h)


def on_kv_reading(h: BackendHealth, shortfall: str, at: float) -> Step:
    """A started engine's KV cache was read: ``shortfall`` (not empty) says it holds less than
    the plan promised. ``up`` ↔ ``degraded`` at once; in any other state the reading is kept
    for the probe that proves the engine serves (``starting`` → ``degraded``)."""
    kept = replace(h, shortfall=shortfall)
    if h.state is S.UP and shortfall:
        return _move(kept, S.DEGRADED, shortfall, at)
    if h.state is S.DEGRADED and not shortfall:
        return _move(kept, S.UP, "KV cache back to the plan", at)
    return Step(kept)


def on_process_exit(h: BackendHealth, restarting: bool, reason: str, at: float) -> Step:
    """The process exited. During a stop that is the stop completing (``stopped``); otherwise the
    backend is ``restarting`` (a restart is scheduled) or ``down`` — at once, no probe needed."""
    if h.state is S.STOPPING:
        return _move(h, S.STOPPED, reason, at, pid=None)
    if h.state in (S.STOPPED, S.DISABLED, S.FAILED):
        raise IllegalTransition(f"{h.name}: process exit reported while {h.state} ({reason})")
    return on_lifecycle(h, S.RESTARTING if restarting else S.DOWN, reason, at, pid=None)
