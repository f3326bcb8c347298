"""The state machine fed with supervisor events, as the daemon's health scheduler feeds it.

Tests of the keeper and the manager use it to read the state their events lead to, without a
scheduler, an HTTP client or a publisher: a small fake of the state's owner, not a mock.
"""

from __future__ import annotations

import time

from gpumgr.backend_state import BackendState
from gpumgr.health import machine


class States:
    """The state machine fed by the keepers' events, as the daemon's scheduler feeds it (a
    ``ChildReady`` counts as the probe that proves ``up``: the keeper checked ``/health``)."""

    def __init__(self) -> None:
        self.health: dict[str, machine.BackendHealth] = {}
        self.illegal: list[str] = []
        """Every refused transition: a test asserts there were none."""
        self.history: dict[str, list[BackendState]] = {}

    def _get(self, name: str) -> machine.BackendHealth:
        return self.health.setdefault(name, machine.initial(name, BackendState.STOPPED, 0.0))

    def _apply(self, name: str, step: machine.Step) -> machine.Transition | None:
        self.health[name] = step.health
        if step.transition is not None:
            self.history.setdefault(name, []).append(step.transition.new)
        return step.transition

    def lifecycle(self, name: str, target: BackendState, reason: str,
                  pid: int | None | machine._Keep = machine.KEEP) -> machine.Transition | None:
        try:
            step = machine.on_lifecycle(self._get(name), target, reason, time.time(), pid)
        except machine.IllegalTransition as exc:
            self.illegal.append(str(exc))
            raise
        return self._apply(name, step)

    def process_exited(self, name: str, restarting: bool, reason: str) -> machine.Transition | None:
        try:
            step = machine.on_process_exit(self._get(name), restarting, reason, time.time())
        except machine.IllegalTransition as exc:
            self.illegal.append(str(exc))
            raise
        return self._apply(name, step)

    def kv_measured(self, name: str, shortfall: str) -> machine.Transition | None:
        """A started engine's KV cache was read (``degraded`` when short of the plan)."""
        return self._apply(name, machine.on_kv_reading(self._get(name), shortfall, time.time()))

    def healths(self) -> dict[str, machine.BackendHealth]:
        return dict(self.health)

    def state(self, name: str) -> BackendState:
        return self._get(name).state

    def reason(self, name: str) -> str:
        return self._get(name).reason

    def request_probe(self, name: str) -> None:
        step = machine.on_probe(self._get(name), machine.Verdict.SUCCESS, "health 200", time.time(), 1)
        self._apply(name, step)
