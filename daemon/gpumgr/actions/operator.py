"""What an operator asks for: start, stop, restart, swap — one mutation at a time, each under
its GPU's lease, each recorded in desired state before it acts, each reporting progress.

A swap replaces the script this project was born to retire (``pkill -f``, ``sleep``, a fixed
0.85 slice, requests failing into the gap):

- it refuses before touching anything when the new model cannot fit once the old one is gone;
- when the new model fits beside the old one (another port) it starts the new one first and
  only then drains and stops the old one (make-before-break);
- otherwise it drains the old one (the router skips it at once), stops it, waits for the memory,
  starts the new one and waits for its health (break-before-make);
- when the new one fails (crash, out of memory, timeout), it is stopped, the old one comes back,
  and the error carries the new one's last log lines.

A second mutation while one runs is refused at once, naming the one in progress.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

import psutil
import structlog

from gpumgr.config.settings import OllamaSettings
from gpumgr.errors import GpumgrError, PlanInfeasible
from gpumgr.gpu import MIB
from gpumgr.plan import PlannerConstants
from gpumgr.supervisor.events import Draining

from .drain import wait_idle
from .lease import GpuLease
from .manager import BackendManager
from .names import resolve_managed
from .prepare import engine_health_url
from .stop import Drain

log = structlog.get_logger(__name__)

Progress = Callable[[str], None]
"""Receives one human line per step ("draining qwen-7b…", "memory released 7.9 GiB")."""


def _quiet(_line: str) -> None:
    """A progress receiver that drops everything."""


class Busy(GpumgrError):
    """Another mutation is in progress (never queued silently)."""


class OperationFailed(GpumgrError):
    """The operation did not succeed; what was rolled back is said, with the engine's last lines."""

    def __init__(self, message: str, log_tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.log_tail = log_tail or []


@dataclass(frozen=True)
class Mutation:
    what: str
    since: float

    def describe(self) -> str:
        return f"{self.what} since {datetime.fromtimestamp(self.since).strftime('%H:%M:%S')}"


@dataclass
class Outcome:
    """What an operation did, for the CLI's last line and for benchmarks."""

    message: str
    timings_s: dict[str, float] = field(default_factory=dict)


class Operator:
    def __init__(self, manager: BackendManager) -> None:
        self.manager = manager
        self.mutation: Mutation | None = None
        self._claimed: Mutation | None = None

    # -- the one-mutation rule ---------------------------------------------------------------
    def check_idle(self) -> None:
        """Raise ``Busy`` now (before a request is accepted) when a mutation runs."""
        if self.mutation is not None:
            raise Busy(f"busy: {self.mutation.describe()}")

    def claim(self, what: str) -> Mutation:
        """Take the one-mutation slot now, for an operation that will start in a moment (the
        control API claims before it answers, so a second request is refused at once, never
        accepted and then refused). The operation named ``what`` takes the claim over;
        ``release`` gives it back if it never does."""
        self.check_idle()
        self.mutation = self._claimed = Mutation(what, time.time())
        return self._claimed

    def release(self, claim: Mutation) -> None:
        if self._claimed is claim:
            self._claimed = None
            self.mutation = None

    @asynccontextmanager
    async def _mutating(self, what: str) -> AsyncIterator[Mutation]:
        if self._claimed is not None and self._claimed.what == what:
            self._claimed = None  # taken over: the slot stays held, now by this operation
        else:
            self.check_idle()
            self.mutation = Mutation(what, time.time())
        assert self.mutation is not None
        log.info("operation.begin", what=what)
        try:
            yield self.mutation
        finally:
            log.info("operation.end", what=what, took_s=round(time.time() - self.mutation.since, 3))
            self.mutation = None

    def resolve(self, name: str) -> str:
        return resolve_managed(self.manager.config, name)

    # -- pieces ------------------------------------------------------------------------------
    def _drain(self, name: str, progress: Progress) -> Drain:
        """The drain hook of a stop: ``draining`` (the router skips it), then in-flight
        requests finish (bounded by ``vllm.drain_timeout_s``)."""
        manager = self.manager
        timeout_s = manager.config.settings.vllm.drain_timeout_s

        async def drain() -> None:
            keeper = manager.keepers.get(name)
            child = keeper.child if keeper is not None else None
            if child is not None:
                manager.ctx.sink(Draining(name, child.pid))
            progress(f"draining {name}…")
            url = engine_health_url(manager.provider(name)).removesuffix("/health") + "/metrics"
            left = await wait_idle(url, timeout_s)
            if left > 0:
                progress(f"{left} request(s) still running after {timeout_s:g} s; stopping anyway")

        return drain

    async def _stop(self, name: str, lease: GpuLease, progress: Progress) -> float:
        t0 = time.monotonic()
        outcome = await self.manager.stop_under(name, lease, self._drain(name, progress))
        if outcome is not None:
            how = "killed" if outcome.killed else "stopped"
            progress(f"{name} {how} in {outcome.stop_s:.1f} s"
                     + ("" if outcome.memory_released else "; GPU memory not yet released"))
        return time.monotonic() - t0

    async def _start(
        self, name: str, lease: GpuLease, progress: Progress, timeout_s: float | None,
        evict_ollama: bool = False,
    ) -> float:
        manager = self.manager
        planner = None
        if evict_ollama and manager.config.settings.ollama.eviction == "never":
            settings = manager.config.settings
            planner = replace(manager.planner, settings=settings.model_copy(
                update={"ollama": OllamaSettings(**{**settings.ollama.model_dump(),
                                                    "eviction": "unload_idle"})}))
        progress(f"starting {name}…")
        try:
            startup_s = await manager.start_under(name, lease, timeout_s, planner)
        except TimeoutError:
            raise OperationFailed(
                f"{name} did not become healthy within {timeout_s:g} s",
                manager.log_tail(name),
            ) from None
        except GpumgrError as exc:
            raise OperationFailed(f"{name} failed to start: {exc}", manager.log_tail(name)) from None
        progress(f"{name} healthy in {startup_s:.1f} s")
        return startup_s

    def _sleeps(self, name: str) -> bool:
        """Whether ``name``'s running engine was started with sleep mode."""
        identity = self.manager.running_identity(name)
        return bool(identity and identity.get("sleep_mode"))

    def _residual_bytes(self) -> int:
        """What a sleeping engine keeps on the card: its CUDA context (the planner's figure)."""
        return PlannerConstants.from_settings(self.manager.config.settings.planner).cuda_context_bytes

    async def _sleep(self, name: str, lease: GpuLease, progress: Progress) -> float:
        """Drain, then sleep: level 1 (weights to host RAM) when host RAM holds them, else
        level 2 (weights dropped, reloaded from disk on wake)."""
        t0 = time.monotonic()
        weights = self.manager.weights_bytes(name)
        available = psutil.virtual_memory().available
        level = 1 if weights is None or available > weights * 1.2 else 2
        where = (f"{weights / 1024 / MIB:.1f} GiB of weights in host RAM" if level == 1 and weights
                 else "weights in host RAM" if level == 1 else "weights dropped (host RAM short)")
        await self.manager.sleep_under(name, lease, level, f"asleep (level {level}): {where}",
                                       self._drain(name, progress))
        progress(f"{name} asleep (level {level}) in {time.monotonic() - t0:.1f} s")
        return time.monotonic() - t0

    async def _wake(self, name: str, lease: GpuLease, progress: Progress) -> float:
        progress(f"waking {name}…")
        try:
            wake_s = await self.manager.wake_under(name, lease)
        except GpumgrError as exc:
            raise OperationFailed(f"{name} failed to wake: {exc}", self.manager.log_tail(name)) from None
        progress(f"{name} awake and answering in {wake_s:.1f} s")
        return wake_s

    async def _weights(self, name: str, progress: Progress) -> None:
        progress(f"checking {name}'s weights…")
        try:
            await self.manager.ensure_weights(name)
        except GpumgrError as exc:
            raise OperationFailed(f"{name}: weights: {exc}") from None

    # -- operations --------------------------------------------------------------------------
    async def start(
        self, name: str, progress: Progress = _quiet, *, timeout_s: float | None = None,
        evict_ollama: bool = False,
    ) -> Outcome:
        name = self.resolve(name)
        async with self._mutating(f"start {name}"):
            manager = self.manager
            if manager.has_live_keeper(name):
                return Outcome(f"{name} is already running (or being kept running)")
            await self._weights(name, progress)
            plan = await manager.fit(name)
            if not plan.feasible and not (evict_ollama or _may_evict(manager)):
                raise PlanInfeasible("; ".join(p.message for p in plan.problems))
            await manager.want(name, True)
            async with manager.locks.lease(manager.gpu_uuid_of(name), f"start {name}") as lease:
                try:
                    startup_s = await self._start(name, lease, progress, timeout_s, evict_ollama)
                except OperationFailed:
                    await manager.want(name, False)
                    raise
            return Outcome(f"{name} up in {startup_s:.1f} s", {"start": startup_s})

    async def stop(self, name: str, progress: Progress = _quiet) -> Outcome:
        name = self.resolve(name)
        async with self._mutating(f"stop {name}"):
            manager = self.manager
            await manager.want(name, False)
            if name not in manager.keepers:
                return Outcome(f"{name} was not running")
            async with manager.locks.lease(manager.gpu_uuid_of(name), f"stop {name}") as lease:
                stop_s = await self._stop(name, lease, progress)
            return Outcome(f"{name} stopped", {"stop": stop_s})

    async def restart(
        self, name: str, progress: Progress = _quiet, *, timeout_s: float | None = None
    ) -> Outcome:
        name = self.resolve(name)
        async with self._mutating(f"restart {name}"):
            manager = self.manager
            await manager.want(name, True)
            async with manager.locks.lease(manager.gpu_uuid_of(name), f"restart {name}") as lease:
                stop_s = await self._stop(name, lease, progress)
                startup_s = await self._start(name, lease, progress, timeout_s)
            return Outcome(f"{name} restarted; up in {startup_s:.1f} s",
                           {"stop": stop_s, "start": startup_s})

    async def sleep(self, name: str, progress: Progress = _quiet) -> Outcome:
        name = self.resolve(name)
        async with self._mutating(f"sleep {name}"):
            manager = self.manager
            if name not in manager.keepers or manager.asleep(name):
                raise OperationFailed(f"{name} is not running (awake)")
            if not self._sleeps(name):
                raise OperationFailed(f"{name} runs without sleep mode (set swap_mode: sleep)")
            async with manager.locks.lease(manager.gpu_uuid_of(name), f"sleep {name}") as lease:
                took = await self._sleep(name, lease, progress)
            return Outcome(f"{name} asleep", {"sleep": took})

    async def wake(self, name: str, progress: Progress = _quiet) -> Outcome:
        name = self.resolve(name)
        async with self._mutating(f"wake {name}"):
            manager = self.manager
            if not manager.asleep(name):
                raise OperationFailed(f"{name} is not asleep")
            await self._check_wake_fits(name, frozenset(), {})
            async with manager.locks.lease(manager.gpu_uuid_of(name), f"wake {name}") as lease:
                took = await self._wake(name, lease, progress)
            return Outcome(f"{name} awake", {"wake": took})

    async def _check_wake_fits(
        self, name: str, gone: frozenset[str], residual: dict[str, int]
    ) -> None:
        """A sleeper needs its whole slice back: refuse before touching anything otherwise.
        ``gone`` leave the card first (asleep ones keeping their ``residual`` bytes)."""
        manager = self.manager
        needed = await manager.wake_needs_bytes(name)
        free = await manager.free_bytes_after(name, gone, residual)
        if needed is not None and free < needed:
            how = "sleeps" if residual else "stops"
            raise PlanInfeasible(
                f"{name} cannot wake: it needs {needed // MIB} MiB more, "
                f"{free // MIB} MiB would be free" + (f" once {', '.join(gone)} {how}" if gone else "")
            )

    async def swap(
        self, old: str, new: str, progress: Progress = _quiet, *, timeout_s: float | None = None
    ) -> Outcome:
        old, new = self.resolve(old), self.resolve(new)
        if old == new:
            raise OperationFailed(f"{old} and {new} are the same provider")
        async with self._mutating(f"swap {old} → {new}"):
            manager = self.manager
            if not manager.has_live_keeper(old) or manager.asleep(old):
                raise OperationFailed(f"{old} is not running: use `gpumgr start {new}`")
            waking = manager.asleep(new)
            if manager.has_live_keeper(new) and not waking:
                raise OperationFailed(f"{new} is already running: use `gpumgr stop {old}`")
            uuid = manager.gpu_uuid_of(new)
            sleeping = self._sleeps(old) and manager.provider(old).port != manager.provider(new).port
            residual = {old: self._residual_bytes()} if sleeping else {}
            if waking:
                await self._check_wake_fits(new, frozenset({old}), residual)
            else:
                await self._weights(new, progress)
                same_port = manager.provider(old).port == manager.provider(new).port
                beside = None if same_port else await manager.fit(new)
                after = await manager.fit(new, frozenset({old}), residual)
                if not after.feasible:
                    why = "; ".join(p.message for p in after.problems)
                    how = "sleeps" if sleeping else "is stopped"
                    raise PlanInfeasible(f"{new} does not fit even once {old} {how}: {why}")
                if beside is not None and beside.feasible and manager.gpu_uuid_of(old) == uuid:
                    return await self._make_before_break(old, new, uuid, progress, timeout_s)
            return await self._break_before_make(old, new, uuid, progress, timeout_s,
                                                 sleeping, waking)

    async def _make_before_break(
        self, old: str, new: str, uuid: str, progress: Progress, timeout_s: float | None
    ) -> Outcome:
        manager = self.manager
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        progress(f"{new} fits beside {old}: starting it first")
        async with manager.locks.lease(uuid, f"swap {old} → {new}") as lease:
            await manager.want(new, True)
            try:
                timings["start"] = await self._start(new, lease, progress, timeout_s)
            except OperationFailed:
                await manager.want(new, False)
                raise
            await manager.want(old, False)
            timings["stop"] = await self._stop(old, lease, progress)
        timings["total"] = time.monotonic() - t0
        return Outcome(f"swapped {old} → {new} (make-before-break) in "
                       f"{timings['total']:.1f} s", timings)

    async def _break_before_make(
        self, old: str, new: str, uuid: str, progress: Progress, timeout_s: float | None,
        sleeping: bool, waking: bool,
    ) -> Outcome:
        """Take OLD off the card (sleep or stop), then bring NEW up (wake or start); when NEW
        fails, take it off again and bring OLD back the way it left."""
        manager = self.manager
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        async with manager.locks.lease(uuid, f"swap {old} → {new}") as lease:
            before = await _free_bytes(manager, new)
            if sleeping:
                timings["sleep"] = await self._sleep(old, lease, progress)
            else:
                await manager.want(old, False)
                timings["stop"] = await self._stop(old, lease, progress)
            if not waking:
                await manager.want(new, True)
            freed = max(0, await _free_bytes(manager, new) - before)
            progress(f"memory released {freed / 1024 / MIB:.1f} GiB")
            try:
                if waking:
                    timings["wake"] = await self._wake(new, lease, progress)
                else:
                    timings["start"] = await self._start(new, lease, progress, timeout_s)
            except OperationFailed as exc:
                progress(f"{new} failed; bringing {old} back…")
                if waking:
                    await manager.sleep_under(new, lease, 1, "asleep (rolled back)")
                else:
                    await manager.want(new, False)
                try:
                    if sleeping:
                        await self._wake(old, lease, progress)
                    else:
                        await manager.want(old, True)
                        await self._start(old, lease, progress, None)
                except OperationFailed as back:
                    raise OperationFailed(
                        f"{exc}; and {old} did not come back: {back}", exc.log_tail
                    ) from None
                raise OperationFailed(f"{exc}; {old} is back", exc.log_tail) from None
        timings["total"] = time.monotonic() - t0
        how = " (sleep mode)" if sleeping or waking else ""
        return Outcome(f"swapped {old} → {new}{how} in {timings['total']:.1f} s", timings)


def _may_evict(manager: BackendManager) -> bool:
    return manager.config.settings.ollama.eviction != "never"


async def _free_bytes(manager: BackendManager, name: str) -> int:
    inv = await asyncio.to_thread(manager.planner.inventory.read)
    if not inv.available:
        return 0
    index = manager.provider(name).gpu
    return next((g.memory_free_bytes for g in inv.gpus if g.index == index), 0)
