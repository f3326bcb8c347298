"""What an operator asks for: start, stop, restart, swap, sleep, wake.

Each is one command to the reconciler: checked first (before anything is written or stops),
then written down as a target desired state with its way back, then converged, in the order the
operation needs. A swap replaces the script this project was born to retire (``pkill -f``,
``sleep``, a fixed 0.85 slice, requests failing into the gap):

- it is refused before touching anything when the new model cannot fit once the old one is gone;
- when the new model fits beside the old one (another port, same card) the new one starts first
  and only then the old one drains and stops (make-before-break);
- otherwise the old one drains (the router skips it at once), stops (or sleeps, with sleep mode),
  the memory comes back, and the new one starts (or wakes) and must answer (break-before-make);
- when the new one fails (crash, out of memory, timeout) it is taken off again and the old one
  comes back the way it left; the error carries the new one's last log lines.

A second operator mutation while one runs is refused at once, naming the one in progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gpumgr.config.settings import OllamaSettings
from gpumgr.errors import PlanInfeasible
from gpumgr.gpu import MIB
from gpumgr.plan import PlannerConstants

from .manager import BackendManager
from .names import resolve_managed
from .prepare import LaunchPlanner
from .reconciler import (
    Busy,
    Mutation,
    OperationFailed,
    Progress,
    Reconciler,
    StartOptions,
    quiet,
)

__all__ = ["Busy", "Mutation", "OperationFailed", "Operator", "Outcome"]


@dataclass
class Outcome:
    """What an operation did, for the CLI's last line and for benchmarks."""

    message: str
    timings_s: dict[str, float] = field(default_factory=dict)


class Operator:
    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler

    @property
    def manager(self) -> BackendManager:
        return self.reconciler.manager

    # -- the one-mutation slot (the reconciler's) -------------------------------------------
    @property
    def mutation(self) -> Mutation | None:
        return self.reconciler.mutation

    def check_idle(self) -> None:
        self.reconciler.check_idle()

    def claim(self, what: str) -> Mutation:
        return self.reconciler.claim(what)

    def release(self, claim: Mutation) -> None:
        self.reconciler.release(claim)

    def resolve(self, name: str) -> str:
        return resolve_managed(self.manager.config, name)

    # -- checks (before anything is written or touched) -------------------------------------
    def _planner(self, evict_ollama: bool) -> LaunchPlanner | None:
        """The planner of a start that may unload Ollama models although the configured
        eviction policy says ``never`` (``gpumgr start --evict-ollama``)."""
        manager = self.manager
        settings = manager.config.settings
        if not evict_ollama or settings.ollama.eviction != "never":
            return None
        ollama = OllamaSettings(**{**settings.ollama.model_dump(), "eviction": "unload_idle"})
        return replace(manager.planner, settings=settings.model_copy(update={"ollama": ollama}))

    async def _check_fits(self, name: str, *, evict: bool = False,
                          gone: frozenset[str] = frozenset(),
                          residual: Mapping[str, int] | None = None, wake: bool = False) -> None:
        """Refuse now, before anything is written or touched, when ``name`` cannot start (or,
        ``wake``, its sleeper cannot wake) once ``gone`` left the card (asleep ones keeping their
        ``residual`` bytes): the one fit decision (``plan.decide``), which counts the Ollama
        models the eviction policy would unload."""
        manager = self.manager
        decision = await asyncio.to_thread(
            manager.planner.decide, manager.provider(name), manager.plan_view(),
            gone=gone, residual=residual, wake=wake, evict=True if evict else None,
        )
        if decision.refusal is not None:
            raise PlanInfeasible(decision.refusal.message)

    def _check_port(self, name: str, gone: frozenset[str] = frozenset()) -> None:
        """Refuse now when another backend gpumgr keeps (awake or asleep) holds ``name``'s port
        (the 7B asleep, the 14B asked for on the same port): the new engine could not bind it
        and its keeper would wait for the port for good, the operation with it."""
        manager = self.manager
        port = manager.provider(name).port
        for other in list(manager.keepers):
            if (other != name and other not in gone and manager.has_live_keeper(other)
                    and manager.provider(other).port == port):
                held = "asleep" if manager.asleep(other) else "running"
                raise OperationFailed(f"{name}'s port {port} is held by {other} ({held}): "
                                      f"use `gpumgr swap {other} {name}` or stop {other} first")

    async def _weights(self, name: str, progress: Progress) -> None:
        progress(f"checking {name}'s weights…")
        try:
            await self.manager.ensure_weights(name)
        except Exception as exc:  # noqa: BLE001 - the hub's own errors too
            self.reconciler.settle([name])
            raise OperationFailed(f"{name}: weights: {exc}") from None

    def _sleeps(self, name: str) -> bool:
        """Whether ``name``'s running engine was started with sleep mode."""
        identity = self.manager.running_identity(name)
        return bool(identity and identity.get("sleep_mode"))

    def _residual_bytes(self) -> int:
        """What a sleeping engine keeps on the card: its CUDA context (the planner's figure)."""
        return PlannerConstants.from_settings(self.manager.config.settings.planner).cuda_context_bytes

    # -- operations --------------------------------------------------------------------------
    async def start(
        self, name: str, progress: Progress = quiet, *, timeout_s: float | None = None,
        evict_ollama: bool = False,
    ) -> Outcome:
        name = self.resolve(name)
        r = self.reconciler
        async with r.mutating(f"start {name}"):
            manager = self.manager
            if manager.has_live_keeper(name):
                return Outcome(f"{name} is already running (or being kept running)")
            self._check_port(name)
            planner = self._planner(evict_ollama)
            await self._weights(name, progress)
            try:
                await self._check_fits(name, evict=evict_ollama)
            finally:
                r.settle([name])
            steps = await r.apply(f"start {name}", r.target(name), [name], progress,
                                  start=StartOptions(timeout_s, planner))
            return Outcome(f"{name} up in {steps.timings_s.get('start', 0.0):.1f} s",
                           steps.timings_s)

    async def stop(self, name: str, progress: Progress = quiet) -> Outcome:
        name = self.resolve(name)
        r = self.reconciler
        async with r.mutating(f"stop {name}"):
            keeper = self.manager.keepers.get(name)
            if keeper is None or keeper.child is None:  # nothing of ours runs (a loop may wait)
                held = foreign_port_holder(self.manager, name)
                await r.apply(f"stop {name}", r.desired.without(name), [name], progress)
                return Outcome(f"{name} was not running" + (f" ({held})" if held else ""))
            steps = await r.apply(f"stop {name}", r.desired.without(name), [name], progress)
            return Outcome(f"{name} stopped", steps.timings_s)

    async def restart(
        self, name: str, progress: Progress = quiet, *, timeout_s: float | None = None
    ) -> Outcome:
        name = self.resolve(name)
        r = self.reconciler
        async with r.mutating(f"restart {name}"):
            # Checked as a start is, before anything stops: a restart (of a running engine or
            # of a sleeper, which comes back awake) is its engine leaving, all its memory back,
            # and a new one planned afresh: the same decision the new engine's planner makes.
            live = self.manager.has_live_keeper(name)
            if not live:
                self._check_port(name)
            await self._weights(name, progress)  # an adopted engine's are not looked up yet
            try:
                await self._check_fits(name, gone=frozenset({name}) if live else frozenset())
            finally:
                r.settle([name])
            steps = await r.apply(f"restart {name}", r.target(name), [name], progress,
                                  start=StartOptions(timeout_s), restart=[name])
            return Outcome(f"{name} restarted; up in {steps.timings_s.get('start', 0.0):.1f} s",
                           steps.timings_s)

    async def sleep(self, name: str, progress: Progress = quiet) -> Outcome:
        name = self.resolve(name)
        r = self.reconciler
        async with r.mutating(f"sleep {name}"):
            manager = self.manager
            if not manager.has_live_keeper(name) or manager.asleep(name):  # failed: not running
                raise OperationFailed(f"{name} is not running (awake)")
            if not self._sleeps(name):
                raise OperationFailed(f"{name} runs without sleep mode (set swap_mode: sleep)")
            steps = await r.apply(f"sleep {name}", r.target(name, asleep=True), [name], progress)
            return Outcome(f"{name} asleep", {"sleep": steps.timings_s.get("sleep", 0.0)})

    async def wake(self, name: str, progress: Progress = quiet) -> Outcome:
        name = self.resolve(name)
        r = self.reconciler
        async with r.mutating(f"wake {name}"):
            if not self.manager.asleep(name):
                raise OperationFailed(f"{name} is not asleep")
            await self._check_fits(name, wake=True)
            steps = await r.apply(f"wake {name}", r.target(name), [name], progress)
            return Outcome(f"{name} awake", {"wake": steps.timings_s.get("wake", 0.0)})

    async def swap(
        self, old: str, new: str, progress: Progress = quiet, *, timeout_s: float | None = None
    ) -> Outcome:
        old, new = self.resolve(old), self.resolve(new)
        if old == new:
            raise OperationFailed(f"{old} and {new} are the same provider")
        r = self.reconciler
        what = f"swap {old} → {new}"
        async with r.mutating(what):
            manager = self.manager
            if not manager.has_live_keeper(old) or manager.asleep(old):
                raise OperationFailed(f"{old} is not running: use `gpumgr start {new}`")
            waking = manager.asleep(new)
            if manager.has_live_keeper(new) and not waking:
                raise OperationFailed(f"{new} is already running: use `gpumgr stop {old}`")
            pinned = f"; {old} is pinned: swapped out because you asked" if (
                manager.provider(old).pinned) else ""  # no policy ever swaps a pin (policies.md)
            if pinned:
                progress(pinned[2:])
            same_port = manager.provider(old).port == manager.provider(new).port
            sleeping = self._sleeps(old) and not same_port
            residual = {old: self._residual_bytes()} if sleeping else {}
            beside = False
            self._check_port(new, gone=frozenset({old}))
            if waking:
                await self._check_fits(new, wake=True, gone=frozenset({old}), residual=residual)
            else:
                await self._weights(new, progress)
                try:
                    await self._check_fits(new, gone=frozenset({old}), residual=residual)
                    beside = not same_port and manager.gpu_uuid_of(old) == manager.gpu_uuid_of(new)
                    if beside:
                        try:
                            await self._check_fits(new)
                        except PlanInfeasible:
                            beside = False
                finally:
                    r.settle([new])
            target = r.target(new)
            target = (target.with_running(old, target.running[old], asleep=True)
                      if sleeping else target.without(old))
            if beside:
                progress(f"{new} fits beside {old}: starting it first")
                steps = await r.apply(what, target, [new, old], progress,
                                      start=StartOptions(timeout_s))
                total = sum(steps.timings_s.values())
                return Outcome(f"swapped {old} → {new} (make-before-break) in {total:.1f} s{pinned}",
                               {**steps.timings_s, "total": round(total, 3)})
            before = await free_bytes(manager, new)

            async def released() -> None:
                freed = max(0, await free_bytes(manager, new) - before)
                progress(f"memory released {freed / 1024 / MIB:.1f} GiB")

            steps = await r.apply(what, target, [old, new], progress,
                                  start=StartOptions(timeout_s), between=released)
            total = sum(steps.timings_s.values())
            mode = " (sleep mode)" if sleeping or waking else ""
            return Outcome(f"swapped {old} → {new}{mode} in {total:.1f} s{pinned}",
                           {**steps.timings_s, "total": round(total, 3)})


async def free_bytes(manager: BackendManager, name: str) -> int:
    """Free bytes on ``name``'s card now (0 when the card cannot be read)."""
    inv = await asyncio.to_thread(manager.planner.inventory.read)
    if not inv.available:
        return 0
    index = manager.provider(name).gpu
    return next((g.memory_free_bytes for g in inv.gpus if g.index == index), 0)


def foreign_port_holder(manager: BackendManager, name: str) -> str | None:
    """Who holds ``name``'s port when gpumgr runs no engine for it, None when nobody listens."""
    port = manager.provider(name).port
    holder = manager.ctx.system.port_listener_pid(port) if port is not None else None
    if holder is None:
        return None
    who = f"pid {holder}" if holder else "a process of another user"
    return f"port {port} is held by {who}, not started by gpumgr: left alone"
