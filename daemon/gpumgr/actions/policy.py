"""The lifecycle policies at work: idle timers and the demand policy, each decision one command
to the reconciler (``Reconciler.policy``), never a start or stop of their own.

Once per ``policies.check_interval_s`` the runner

- reads each awake managed engine's own counters (``/metrics``: ``vllm:request_success_total``,
  running, waiting) into its ``Activity`` and the window of requests it finished;
- for a provider with ``idle:``, computes how long until its idle action and, when due, asks
  for it once (sleep, stop, or a swap back to ``swap_to``): once per idle period, since any
  request (or a wake, a restart) starts the period again;
- for each ``policy: demand`` provider the router reported misses for (``report``: counts of
  requests LiteLLM could not send to it because it is not resident), decides with
  ``gpumgr.plan.policy.decide`` whether to fill its free place, or swap out what holds it.

Every decision, made or declined, is kept for the status (``views``) and logged when its reason
changes. Pins are respected twice: by the pure decision, and here before any command.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from gpumgr.aio import spawn_task
from gpumgr.config.hosts import collision_host
from gpumgr.config.registry import Provider
from gpumgr.errors import GpumgrError, PlanInfeasible
from gpumgr.plan.policy import (
    Activity,
    Decision,
    DemandParams,
    Place,
    Window,
    decide,
    idle_action_in_s,
    next_swap_at,
    swaps_in_hour,
)

from .operator import Operator
from .reconciler import Reconciler

log = structlog.get_logger(__name__)

MAX_REPORT_NAMES = 64
"""A demand report names at most this many providers."""
MAX_REPORT_COUNT = 10_000
"""One name's count in one report is capped here (a report is a hint, not a ledger)."""
REPORT_MIN_INTERVAL_S = 1.0
"""At most one report per name per second is counted; more are ignored."""
METRICS_TIMEOUT_S = 1.0

Publish = Callable[[str, "float | None", "dict[str, Any]"], None]
"""Told each round, per provider with a policy: (name, idle_action_in_s, policy fields)."""


@dataclass
class _Engine:
    activity: Activity
    served: Window
    arrived: float
    in_flight: int = 0


@dataclass
class PolicyRunner:
    reconciler: Reconciler
    operator: Operator
    clock: Callable[[], float] = time.time
    publish: Publish | None = None
    _engines: dict[str, _Engine] = field(default_factory=dict)
    _missed: dict[str, Window] = field(default_factory=dict)
    _last_report: dict[str, float] = field(default_factory=dict)
    _idle_fired: dict[str, float] = field(default_factory=dict)
    _swaps: dict[str, list[float]] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _bringing: set[str] = field(default_factory=set)
    """Providers a policy command of ours is bringing in now (not decided on again meanwhile)."""
    _failed: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Provider → when our last command to bring it in failed, and how (not asked again for
    ``window_s``: a swap that cannot happen must not be retried every check)."""
    _resolving: set[str] = field(default_factory=set)
    """Providers whose weights are being resolved for the fit check (never started yet)."""

    # -- inputs --------------------------------------------------------------------------------
    @property
    def params(self) -> DemandParams:
        d = self.reconciler.manager.config.settings.policies.demand
        return DemandParams(d.min_residency_s, d.window_s, d.margin, d.min_requests,
                            d.max_swaps_per_hour)

    def _providers(self) -> dict[str, Provider]:
        manager = self.reconciler.manager
        return {n: manager.provider(n) for n in manager.known()}

    def report(self, counts: Mapping[str, int]) -> dict[str, Any]:
        """The router's misses: requests it could not send to a provider that is swappable but
        not resident. Counts only; names that are not ``policy: demand`` providers, that are
        resident, or that reported within the last second are ignored (and said so)."""
        now = self.clock()
        providers = self._providers()
        accepted: dict[str, int] = {}
        ignored: dict[str, str] = {}
        for name, count in list(counts.items())[:MAX_REPORT_NAMES]:
            p = providers.get(name)
            if p is None or p.policy != "demand":
                ignored[name] = "not a provider under policy: demand"
                continue
            if self._awake(name):
                ignored[name] = "resident"
                continue
            last = self._last_report.get(name)
            if last is not None and now - last < REPORT_MIN_INTERVAL_S:
                ignored[name] = "more than one report a second"
                continue
            self._last_report[name] = now
            n = max(0, min(int(count), MAX_REPORT_COUNT))
            self._window(name).add(now, n)
            accepted[name] = n
        if accepted:
            log.info("policy.demand_reported", counts=accepted)
        return {"accepted": accepted, "ignored": ignored}

    def _window(self, name: str) -> Window:
        w = self._missed.get(name)
        window_s = self.params.window_s
        if w is None or w.window_s != window_s:
            w = self._missed[name] = Window(window_s)
        return w

    def _awake(self, name: str) -> bool:
        m = self.reconciler.manager
        return m.has_live_keeper(name) and not m.asleep(name)

    # -- the round -----------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - a policy bug must not end the daemon's loop
                log.exception("policy.tick_failed")
            await asyncio.sleep(self.reconciler.manager.config.settings.policies.check_interval_s)

    async def tick(self) -> None:
        now = self.clock()
        providers = self._providers()
        if any(p.idle is not None or p.policy == "demand" for p in providers.values()):
            await self._observe(now)  # no engine is read when no provider has a policy
        for name, p in providers.items():
            if p.idle is not None and not p.pinned:
                self._idle(name, p, now)
        for name, p in providers.items():
            if p.policy == "demand" and not p.pinned:
                await self._demand(name, p, providers, now)
        if self.publish is not None:
            for name, p in providers.items():
                if p.idle is not None or p.policy == "demand" or p.pinned:
                    self.publish(name, self.idle_in_s(name, now), self.view(name, now))

    async def _observe(self, now: float) -> None:
        manager = self.reconciler.manager
        awake = [n for n in manager.known() if self._awake(n)]
        for gone in set(self._engines) - set(awake):
            del self._engines[gone]  # asleep or stopped: a wake or start begins afresh
        window_s = self.params.window_s

        async def read(name: str) -> None:
            keeper = manager.keepers.get(name)
            if keeper is None:
                return
            load = await keeper.engine.load(METRICS_TIMEOUT_S)
            pid = keeper.child.pid if keeper.child is not None else None
            e = self._engines.get(name)
            if e is None or e.served.window_s != window_s:
                e = self._engines[name] = _Engine(Activity(now), Window(window_s), now)
            if load is None:
                return
            e.in_flight = load.running + load.waiting
            first = e.activity.pid != pid  # a new engine: what it finished before is not news
            done = e.activity.observe(now, pid, load.finished, e.in_flight)
            if not first and done > 0:
                e.served.add(now, done)

        await asyncio.gather(*(read(n) for n in awake))

    # -- idle ----------------------------------------------------------------------------------
    def idle_in_s(self, name: str, now: float) -> float | None:
        p = self.reconciler.manager.provider(name)
        e = self._engines.get(name)
        if p.idle is None or p.pinned or e is None:
            return None
        return round(idle_action_in_s(e.activity, now, p.idle.after_s), 1)

    def _idle(self, name: str, p: Provider, now: float) -> None:
        assert p.idle is not None
        e = self._engines.get(name)
        if e is None or idle_action_in_s(e.activity, now, p.idle.after_s) > 0:
            return
        if self._idle_fired.get(name) == e.activity.since:
            return  # fired once for this idle period
        action, target = p.idle.action, p.idle.swap_to
        why = f"the idle policy: no request for {p.idle.after_s:g} s"
        op = self.operator
        if action == "sleep":
            ok = self.reconciler.policy(f"sleep {name}", why, lambda: op.sleep(name))
        elif action == "swap" and target is not None and not self._awake(target):
            ok = self.reconciler.policy(f"swap {name} → {target}", why,
                                        lambda: op.swap(name, target))
        else:
            ok = self.reconciler.policy(f"stop {name}", why, lambda: op.stop(name))
        if ok:
            self._idle_fired[name] = e.activity.since
            log.info("policy.idle", backend=name, action=action, swap_to=target,
                     idle_s=round(e.activity.idle_for(now), 1))

    # -- demand --------------------------------------------------------------------------------
    def _partners(self, name: str, providers: Mapping[str, Provider]) -> tuple[list[str], list[str]]:
        """Awake providers on ``name``'s port, and awake ones elsewhere on its card."""
        p = providers[name]
        port = [n for n, o in providers.items() if n != name and self._awake(n)
                and o.port == p.port and collision_host(o.host) == collision_host(p.host)]
        card = [n for n, o in providers.items() if n != name and n not in port
                and self._awake(n) and o.gpu == p.gpu]
        return port, card

    async def _place(self, name: str, providers: Mapping[str, Provider], now: float) -> Place:
        port, card = self._partners(name, providers)
        resident: str | None = port[0] if port else None
        if resident is None:
            try:
                await self.operator._check_fits(name, wake=self.reconciler.manager.asleep(name))
            except PlanInfeasible:
                demanders = [n for n in card if providers[n].policy == "demand"]
                resident = next(iter(demanders or card), None)
            except GpumgrError:
                resident = None
        if resident is None:
            return Place(None)
        r = providers[resident]
        e = self._engines.get(resident)
        return Place(resident, e.arrived if e else now, r.pinned, r.policy == "demand",
                     e.in_flight if e else 0, e.served.total(now) if e else 0)

    def _plannable(self, name: str) -> bool:
        """Whether the fit check can plan ``name``: its snapshot (or the hub's facts) is known.
        A provider never started since the daemon came up has neither until its weights are
        resolved, as the operation itself would (``Operator._weights``) before its check."""
        weights = self.reconciler.manager.weights
        return name in weights.snapshots or name in weights.facts()

    def _resolve(self, name: str) -> None:
        """Resolve ``name``'s weights in the background (local snapshot, else a download: what
        the swap or start would do first); the next check decides with them."""
        if name in self._resolving:
            return
        self._resolving.add(name)

        async def resolve() -> None:
            try:
                await self.reconciler.manager.ensure_weights(name)
            except Exception as exc:  # noqa: BLE001 - the hub's errors too: decided again later
                log.warning("policy.weights_failed", backend=name, error=str(exc))
            finally:
                self._resolving.discard(name)
                self.reconciler.settle([name])  # `stopped` again, not left `downloading`

        spawn_task(self._tasks, resolve(), f"policy:weights {name}")

    def _place_key(self, name: str) -> str:
        return f"gpu{self.reconciler.manager.provider(name).gpu}"

    async def _demand(self, name: str, p: Provider, providers: Mapping[str, Provider],
                      now: float) -> None:
        window = self._missed.get(name)
        missed = window.total(now) if window is not None else 0
        if self._awake(name) or missed == 0 or name in self._bringing:
            return
        failed = self._failed.get(name)
        if failed is not None and now - failed[0] < self.params.window_s:
            self._record(name, Decision(now, "none", name, None, failed[1],
                                        failed[0] + self.params.window_s))
            return
        if not self._partners(name, providers)[0] and not self._plannable(name):
            self._resolve(name)  # its place is found by the fit check, which needs its weights
            self._record(name, Decision(now, "none", name, None,
                                        f"reading {name}'s weights before the fit check"))
            return
        place = await self._place(name, providers, now)
        key = self._place_key(name)
        decision = decide(now, {name: missed}, place, self._swaps.get(key, []), self.params)
        if decision.action == "swap" and place.resident is not None and place.pinned:
            decision = Decision(now, "none", name, place.resident, "pinned", None)  # never
        if decision.made:
            decision = self._command(decision, name, place, key)
        self._record(name, decision)

    def _command(self, decision: Decision, name: str, place: Place, key: str) -> Decision:
        op, r = self.operator, self.reconciler
        why = f"the demand policy: {decision.reason}"

        def done(error: BaseException | None) -> None:
            self._bringing.discard(name)
            when = self.clock()
            if error is None:
                if decision.action == "swap":
                    self._swaps.setdefault(key, []).append(when)
                self._missed.pop(name, None)  # served now: the old misses are spent
                self._failed.pop(name, None)
                outcome = f"{decision.action} done"
            else:
                outcome = f"{decision.action} failed: {error}"
                self._failed[name] = (when, f"{outcome} (asked again {self.params.window_s:g} s "
                                            "after it)")
            self._record(name, Decision(when, decision.action, name, decision.resident, outcome,
                                        decision.next_swap_at))

        if decision.action == "swap" and place.resident is not None:
            old = place.resident
            ok = r.policy(f"swap {old} → {name}", why, lambda: op.swap(old, name), done)
            made = f"swap {old} → {name}"
        elif r.manager.asleep(name):
            ok = r.policy(f"wake {name}", why, lambda: op.wake(name), done)
            made = f"wake {name}"
        else:
            ok = r.policy(f"start {name}", why, lambda: op.start(name), done)
            made = f"start {name}"
        if not ok:
            busy = r.mutation.describe() if r.mutation is not None else "shutting down"
            return Decision(decision.at, "none", name, decision.resident,
                            f"would {made}, but busy: {busy}", decision.next_swap_at)
        self._bringing.add(name)
        log.info("policy.decision", made=made, reason=decision.reason)
        return decision

    def _record(self, name: str, decision: Decision) -> None:
        old = self.decisions.get(name)
        self.decisions[name] = decision
        if old is None or old.reason != decision.reason:
            log.info("policy.demand", backend=name, action=decision.action,
                     resident=decision.resident, reason=decision.reason,
                     next_swap_at=decision.next_swap_at)

    # -- status --------------------------------------------------------------------------------
    def view(self, name: str, now: float | None = None) -> dict[str, Any]:
        """The ``policy`` object of ``name``'s status entry."""
        now = self.clock() if now is None else now
        p = self.reconciler.manager.provider(name)
        out: dict[str, Any] = {"mode": p.policy, "pinned": p.pinned}
        if p.idle is not None:
            out["idle_after_s"] = p.idle.after_s
            out["idle_action"] = (f"swap to {p.idle.swap_to}" if p.idle.action == "swap"
                                  else p.idle.action)
        if p.policy == "demand":
            params = self.params
            key = self._place_key(name)
            swaps = swaps_in_hour(self._swaps.get(key, []), now)
            window = self._missed.get(name)
            e = self._engines.get(name)
            out.update({
                "window_s": params.window_s,
                "missed": window.total(now) if window is not None else 0,
                "served": e.served.total(now) if e is not None else 0,
                "margin": params.margin,
                "min_residency_s": params.min_residency_s,
                "swaps_last_hour": len(swaps),
                "max_swaps_per_hour": params.max_swaps_per_hour,
            })
            if e is not None:
                nxt = next_swap_at(Place(name, e.arrived), swaps, now, params)
                out["next_swap_at"] = nxt if nxt != float("inf") else None
            d = self.decisions.get(name)
            if d is not None:
                out.update({"last_decision": d.action if d.made else "declined",
                            "reason": d.reason, "decided_at": d.at})
                if not self._awake(name) and d.next_swap_at not in (None, float("inf")):
                    out["next_swap_at"] = d.next_swap_at
        return out

    def start(self) -> None:
        spawn_task(self._tasks, self.run(), "policies")

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
