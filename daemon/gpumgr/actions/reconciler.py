"""The reconciler: the one writer of what runs.

Every change to what runs is a command to it: the boot's adoption, an operator's
start/stop/restart/swap/sleep/wake, a reload (SIGHUP and the API alike), the restart of a hung
engine, the shutdown. Commands take turns (one at a time, in arrival order); an operator's
mutation is refused at once while another operator mutation runs or waits (409, "busy: …"),
while a reload arriving meanwhile waits its turn and is applied after it.

What should run lives in one place, ``<state_dir>/desired.json``, written only here, and always
*before* anything is acted on. An operation writes its target together with its ``intent``
(what it is and the state to go back to); ``converge(name)`` is the only code that compares the
desired state of a backend (running, asleep, identity) with what is observed (its keeper) and
calls start/stop/sleep/wake. A failed operation rolls back by writing the previous state and
converging again; a daemon killed at any point finds the intent at boot and converges to the
previous state when it is still intact, else to the target, never to nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import structlog

from gpumgr.aio import spawn_task
from gpumgr.config import Config
from gpumgr.errors import GpumgrError
from gpumgr.gpu import GpuInventory
from gpumgr.supervisor.events import BackendStopped

from . import admit
from .boot import boot, changed
from .desired import DesiredState, Intent, desired_for, launch_identity
from .lease import GpuLease
from .manager import BackendManager, ReconcileReport
from .steps import EngineSteps, OperationFailed, Progress, StartOptions, Steps, quiet

__all__ = ["Busy", "Mutation", "OperationFailed", "Progress", "Reconciler", "StartOptions",
           "Steps", "quiet"]

log = structlog.get_logger(__name__)

class Busy(GpumgrError):
    """Another operator mutation runs or waits (never queued silently)."""


@dataclass(frozen=True)
class Mutation:
    what: str
    since: float
    by: str = ""
    """Who asked, when not an operator: ``the demand policy: …`` (``Reconciler.policy``)."""

    def describe(self) -> str:
        at = datetime.fromtimestamp(self.since).strftime('%H:%M:%S')
        return f"{self.what} since {at}" + (f" ({self.by})" if self.by else "")


class Reconciler:
    def __init__(self, manager: BackendManager) -> None:
        self.manager = manager
        self.steps = EngineSteps(manager)
        self._turn = asyncio.Lock()
        self.mutation: Mutation | None = None
        self._claimed: Mutation | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._hung: set[str] = set()
        self._closed = False

    # -- the one-mutation slot (operators) ---------------------------------------------------
    def target(self, name: str, *, asleep: bool = False) -> DesiredState:
        """The desired state with ``name`` running (with its configured identity)."""
        manager = self.manager
        identity = launch_identity(manager.provider(name), manager.config.settings.vllm)
        return self.desired.with_running(name, identity, asleep=asleep)

    def check_idle(self) -> None:
        """Raise ``Busy`` now (before a request is accepted) when an operator mutation runs."""
        if self.mutation is not None:
            raise Busy(f"busy: {self.mutation.describe()}")

    def claim(self, what: str) -> Mutation:
        """Take the slot now for an operation that starts in a moment (the control API claims
        before it answers, so a second request is refused at once, never accepted and then
        refused). The operation named ``what`` takes the claim over; ``release`` gives it back
        if it never does."""
        self.check_idle()
        self.mutation = self._claimed = Mutation(what, time.time())
        return self._claimed

    def release(self, claim: Mutation) -> None:
        if self._claimed is claim:
            self._claimed = None
            self.mutation = None

    @asynccontextmanager
    async def mutating(self, what: str) -> AsyncIterator[None]:
        """An operator's mutation: the slot (refused at once when taken), then its turn."""
        if self._claimed is not None and self._claimed.what == what:
            self._claimed = None  # taken over: the slot stays held, now by this operation
        else:
            self.check_idle()
            self.mutation = Mutation(what, time.time())
        try:
            async with self.turn(what):
                log.info("operation.begin", what=what)
                try:
                    yield
                finally:
                    log.info("operation.end", what=what)
        finally:
            self.mutation = None

    @asynccontextmanager
    async def turn(self, what: str) -> AsyncIterator[None]:
        """Wait for this command's turn (commands run one at a time, in arrival order)."""
        if self._closed:
            raise GpumgrError("gpumgr is shutting down")
        async with self._turn:
            t0 = time.monotonic()
            log.info("command.begin", what=what)
            try:
                yield
            finally:
                log.info("command.end", what=what, took_s=round(time.monotonic() - t0, 3))

    # -- desired state: written here only, before acting ------------------------------------
    @property
    def desired(self) -> DesiredState:
        return self.manager.desired

    async def write(self, desired: DesiredState) -> None:
        self.manager.desired = desired
        await self.manager.save_desired()

    # -- converge ----------------------------------------------------------------------------
    async def converge(
        self, name: str, lease: GpuLease, progress: Progress = quiet, *,
        start: StartOptions = StartOptions(), restart: bool = False, steps: Steps | None = None,
    ) -> Steps:
        """Bring ``name`` to its desired state (running or not, asleep or awake, identity)
        under ``lease``: the only place that starts, stops, sleeps or wakes for a command.
        ``restart`` stops a running engine first even when nothing differs. Raises
        ``OperationFailed`` when a start or wake fails (its engine taken off again)."""
        steps = steps if steps is not None else Steps()
        manager = self.manager
        wanted = self.desired.running.get(name)
        asleep_wanted = name in self.desired.sleeping
        live = manager.has_live_keeper(name)
        if wanted is None or (live and (restart or manager.running_identity(name) != wanted)):
            if name in manager.keepers:
                steps.add("stop", await self.steps.stop(name, lease, progress))
            if wanted is None:
                return steps
            live = False
        if not live:
            steps.add("start", await self.steps.start(name, lease, progress, start))
        keeper = manager.keepers.get(name)
        if keeper is not None and keeper.asleep and not asleep_wanted:
            steps.add("wake", await self.steps.wake(name, lease, progress))
        elif keeper is not None and not keeper.asleep and asleep_wanted:
            steps.add("sleep", await self.steps.sleep(name, lease, progress))
        return steps

    # -- operations ----------------------------------------------------------------------------
    async def apply(
        self, what: str, target: DesiredState, order: Sequence[str], progress: Progress = quiet,
        *, start: StartOptions = StartOptions(), restart: Iterable[str] = (),
        between: Callable[[], Awaitable[None]] | None = None,
        previous: DesiredState | None = None,
    ) -> Steps:
        """Converge ``order`` (in that order) to ``target`` under the leases of their cards,
        the target and the way back written down first. When a step fails, the previous state
        is written and the same backends converge back in the reverse order; the error then
        says what came back. The caller holds its turn. ``between`` runs after the first step
        (a swap's "memory released" line)."""
        previous = (previous or self.desired).with_intent(None)
        await self.write(target.with_intent(Intent(what, time.time(), previous)))
        steps = Steps()
        forced = set(restart)
        uuids = {self.manager.gpu_uuid_of(n) for n in order}
        async with self.manager.locks.leases(uuids, what) as lease:
            done: list[str] = []
            try:
                for name in order:
                    done.append(name)
                    await self.converge(name, lease, progress, start=start,
                                        restart=name in forced, steps=steps)
                    if between is not None and len(done) == 1:
                        await between()
            except OperationFailed as exc:
                await self._roll_back(what, previous, target, done, lease, progress, exc)
                raise AssertionError("unreachable") from None  # _roll_back always raises
            finally:
                self.settle(order)
        await self.write(self.desired.with_intent(None))
        return steps

    async def _roll_back(
        self, what: str, previous: DesiredState, target: DesiredState, done: Sequence[str],
        lease: GpuLease, progress: Progress, exc: OperationFailed,
    ) -> None:
        """Converge what the operation changed back to ``previous`` (reverse order), then
        raise ``exc`` saying what came back. A backend the operation did not change (a restart)
        is handed to its keeper, whose restart policy goes on trying."""
        differs = set(changed(previous, target))
        back = [n for n in reversed(done) if n in differs]
        for name in done:
            if name not in differs and name in previous.running and name not in self.manager.keepers:
                self.manager.launch(name)
        if not back:
            await self.write(previous)
            raise exc
        await self.write(previous.with_intent(Intent(f"roll back {what}", time.time(), previous)))
        names = ", ".join(n for n in back if n in previous.running)
        if names:
            progress(f"{done[-1]} failed; bringing {names} back…")
        try:
            for name in back:
                await self.converge(name, lease, progress)
        except OperationFailed as again:
            await self.write(self._what_came_back(back).with_intent(None))
            raise OperationFailed(f"{exc}; and {names} did not come back: {again}",
                                  exc.log_tail) from None
        await self.write(self.desired.with_intent(None))
        raise OperationFailed(f"{exc}; {names} is back" if names else str(exc), exc.log_tail)

    def _what_came_back(self, names: Iterable[str]) -> DesiredState:
        """After a rollback that failed: ``desired.json`` stays true to what runs. A sleeper that
        did not come back leaves it (asleep means not serving: it is never started again awake
        behind the operator's back, as ``sleeper_gone``); an awake backend that did not come
        back is handed to its keeper: its restart policy goes on trying, or it ends ``failed``
        saying why (never desired with nothing keeping it)."""
        desired = self.desired
        for name in names:
            if name not in desired.running or self.manager.has_live_keeper(name):
                continue
            if name in desired.sleeping:
                log.warning("reconciler.sleeper_not_back", backend=name)
                desired = desired.without(name)
            elif name not in self.manager.keepers:
                self.manager.launch(name)
        return desired

    def settle(self, names: Iterable[str]) -> None:
        """Every backend an operation touched ends in a terminal state: one with no keeper
        (refused, rolled back, never started) is published ``stopped``, whatever it showed
        (``downloading`` from a weights check, say)."""
        healths = self.manager.healths()
        for name in names:
            if name in self.manager.keepers:
                continue
            h = healths.get(name)
            if h is not None and h.state.value not in ("stopped", "disabled"):
                self.manager.ctx.sink(BackendStopped(name))

    # -- boot ----------------------------------------------------------------------------------
    async def boot(self, first_read: GpuInventory) -> ReconcileReport:
        """The first command: fold the registry into the stored desired state, adopt the engines
        an earlier daemon left, finish or undo an operation it was killed in, stop what nobody
        wants, and launch a keeper for every backend that should run. Returns without waiting
        for starts (weights and engines come up in their keepers)."""
        async with self.turn("boot adoption"):
            self.mutation = Mutation("boot adoption", time.time())
            try:
                return await boot(self, first_read)
            finally:
                self.mutation = None

    # -- reload ----------------------------------------------------------------------------
    async def reload(self, config: Config) -> ReconcileReport:
        """Apply a new configuration (the caller's turn): start added backends, stop removed
        ones, restart exactly those whose launch identity changed; the rest stay (same pid).
        An added backend is checked first as ``gpumgr start`` is (``admit``: its port, the fit);
        a refused one is a warning in ``report.refused``, never a keeper waiting for good."""
        manager = self.manager
        before = manager.known()
        manager.configure(config)
        await manager.refresh_gpus()
        await self.write(desired_for(config, self.desired.with_intent(None)))
        report = ReconcileReport()
        for name in list(manager.keepers):
            wanted = self.desired.running.get(name)
            if wanted is None:
                await manager.stop_keeper(name)
                report.stopped.append(name)
            elif wanted != manager.running_identity(name):
                await manager.stop_keeper(name)
                if name in self.desired.sleeping:  # never woken behind the operator's back:
                    await self.write(self.desired.without(name))  # asleep = not serving
                    report.stopped.append(name)
                    continue
                manager.launch(name)
                report.restarted.append(name)
            else:
                manager.keep_running(name)
                report.unchanged.append(name)
        # disabled or removed: each ends ``stopped`` (a failed one with no keeper too), and
        # only then ``disabled`` (the status's prune, after this): a legal path from any state
        self.settle(before - manager.known())
        starting = [n for n in self.desired.running
                    if n not in manager.keepers and n not in self.desired.sleeping]
        for i, name in enumerate(starting):  # checked as `gpumgr start` is, one after another
            why = await admit.refusal(manager, self.desired, name, starting[i + 1:])
            if why is not None:
                await self.refuse(name, why, report)
                continue
            manager.launch(name)
            report.started.append(name)
        log.info("reconciler.reloaded", **vars(report))
        return report

    async def refuse(self, name: str, why: str, report: ReconcileReport) -> None:
        """The owner's file asks for ``name`` but it may not start (``admit``): not desired
        (desired.json says what runs), ``stopped`` with the reason, a warning of the reload."""
        log.warning("reconciler.not_started", backend=name, why=why)
        await self.write(self.desired.without(name))
        self.manager.ctx.sink(BackendStopped(name, f"not started: {why}"))
        report.refused[name] = why

    # -- policies ----------------------------------------------------------------------------
    def policy(self, what: str, by: str, run: Callable[[], Awaitable[object]],
               done: Callable[[BaseException | None], None] | None = None) -> bool:
        """A lifecycle policy asks for an operation (``what``, e.g. ``swap a → b``; ``run``
        performs it through the operator, whose operation of the same name takes this claim
        over). Returns False, doing nothing, while an operator mutation (or another policy's)
        runs or waits, or at shutdown: a policy never queues behind an operator and never
        refuses one after the fact. Otherwise it claims the one-mutation slot now, so an
        operator's request meanwhile is refused at once with a 409 that names the policy
        (``busy: swap a → b since 12:01:07 (the demand policy: …)``), and runs in its turn.
        ``done`` receives the operation's error (None on success)."""
        if self._closed or self.mutation is not None:
            return False
        claim = self.claim(what)
        self.mutation = self._claimed = Mutation(claim.what, claim.since, by)
        spawn_task(self.tasks, self._run_policy(self._claimed, run, done), f"policy:{what}")
        return True

    async def _run_policy(self, claim: Mutation, run: Callable[[], Awaitable[object]],
                          done: Callable[[BaseException | None], None] | None) -> None:
        error: BaseException | None = None
        try:
            await run()
        except GpumgrError as exc:
            error = exc
            log.warning("policy.failed", what=claim.what, by=claim.by, error=str(exc))
        finally:
            self.release(claim)  # never taken over (refused before its turn): give it back
        if done is not None:
            done(error)

    # -- hung engines ------------------------------------------------------------------------
    def hung(self, name: str, reason: str) -> bool:
        """A watcher saw ``name`` hang: restart it in its turn (the keeper's restart policy and
        its limits apply to the exit). False when one is already on its way."""
        if name in self._hung or self._closed:
            return False
        self._hung.add(name)
        spawn_task(self.tasks, self._restart_hung(name, reason), f"hung:{name}")
        return True

    async def _restart_hung(self, name: str, reason: str) -> None:
        try:
            async with self.turn(f"restart hung {name}"):
                keeper = self.manager.keepers.get(name)
                if keeper is None or name not in self.desired.running:
                    return
                async with self.manager.locks.lease(keeper.gpu_uuid, f"restart hung {name}") as lease:
                    await keeper.stop_unresponsive(lease, reason)
        finally:
            self._hung.discard(name)

    # -- sleepers that died --------------------------------------------------------------------
    def sleeper_gone(self, name: str) -> bool:
        """A sleeping engine died (its keeper does not bring it back awake): in its turn, drop
        it from what should run, as the boot does (``adopt.sleeper_gone``), so ``desired.json``
        never keeps asking for a sleeper that is not there. False when already on its way."""
        if name in self._hung or self._closed:
            return False
        self._hung.add(name)
        spawn_task(self.tasks, self._forget_sleeper(name), f"sleeper-gone:{name}")
        return True

    async def _forget_sleeper(self, name: str) -> None:
        try:
            async with self.turn(f"forget dead sleeper {name}"):
                keeper = self.manager.keepers.get(name)
                if (name not in self.desired.sleeping or keeper is None or keeper.running
                        or keeper.asleep):
                    return
                log.info("adopt.sleeper_gone", backend=name)
                await self.write(self.desired.without(name))
                async with self.manager.locks.lease(keeper.gpu_uuid, f"forget {name}") as lease:
                    await self.manager.stop_under(name, lease)  # published ``stopped``
        finally:
            self._hung.discard(name)

    # -- shutdown ------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """The last command: no new ones are accepted; what is queued is cancelled; every engine
        stops (desired state is kept: the next boot starts the same set)."""
        self._closed = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        async with self._turn:
            await self.manager.shutdown()
