"""The keep-alive loop of one managed engine: weights, start, watch, restart per policy, stop.

Each managed backend has exactly one keeper, and only its keeper touches its child. The keeper
keeps no state of its own for others to read: it reports what happened as events
(``gpumgr.supervisor.events``) and the state machine decides what state that is. Starts and
stops hold the GPU's lease (``actions.lease``); what follows an exit is decided by the pure
restart policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from gpumgr.engines.vllm_client import EngineClient
from gpumgr.supervisor import process
from gpumgr.supervisor.events import (
    BackendFailed,
    BackendStopped,
    ChildExited,
    ChildReady,
    ChildStarted,
    ChildStopped,
    ChildStopping,
    Restarting,
)
from gpumgr.supervisor.logs import log_path, rotate_live, tail_lines
from gpumgr.supervisor.restart import CrashHistory, RestartAction, RestartPolicy, decide

from .lease import GpuLease
from .sleep_mode import EngineSleep
from .start import (
    ChildGone, LaunchSpec, Prepare, PrepareHint, StartContext, StartFailed, wait_ready,
)
from .starter import EngineStarter, EnsureWeights, FirstAttempt, Refused, pause
from .stop import Drain, stop_engine

log = structlog.get_logger(__name__)

_LOG_ROTATE_CHECK_S = 60.0


class BackendKeeper:
    """One managed engine's process for as long as it should run: it starts it (through
    ``EngineStarter``), restarts it after an exit by the restart policy, adopts a recorded one,
    stops it, and puts it to sleep or wakes it (``EngineSleep``). The reconciler decides what
    should run; the keeper owns the child."""

    def __init__(
        self,
        backend: str,
        gpu_uuid: str,
        port: int,
        prepare: Prepare,
        ctx: StartContext,
        policy: RestartPolicy,
        *,
        weights: EnsureWeights | None = None,
        health_url: str | None = None,
        served_name: str | None = None,
        api_key: str | None = None,
        port_recheck_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.gpu_uuid = gpu_uuid
        self.port = port
        self._ctx = ctx
        self._policy = policy
        self._starter = EngineStarter(backend, gpu_uuid, port, prepare, ctx, policy,
                                      self._on_spawned, weights=weights,
                                      port_recheck_s=port_recheck_s)
        self.health_url = health_url or f"http://127.0.0.1:{port}/health"
        """Where ``/health`` answers (checked before an adopted engine counts as serving)."""
        self.base_url = self.health_url.removesuffix("/health")
        self._served_name = served_name
        self._api_key = api_key
        self._sleep_mode = EngineSleep(backend, ctx, lambda: self.engine)
        self._clock = clock
        self.last_error = ""
        """The last error line of the engine's log at its last unexpected exit."""
        self.child: process.ChildProcess | None = None
        self._task: asyncio.Task[None] | None = None
        self._adopted_fraction: float | None = None
        self._first: FirstAttempt | None = None
        self.settled = asyncio.Event()
        """Set once the keeper knows what it holds: an adopted engine answered (awake or asleep)
        or was given up; at once for a keeper that starts its own."""

    # -- public ----------------------------------------------------------------------------
    def launch(
        self,
        adopted: process.ChildProcess | None = None,
        adopted_fraction: float | None = None,
        first: FirstAttempt | None = None,
    ) -> asyncio.Task[None]:
        """Start the keep-alive loop (optionally around an adopted child and its slice, or with
        a first attempt an operator waits for) as a task."""
        if self.running:
            raise RuntimeError(f"{self.backend}: keeper already running")
        if adopted is not None:  # known at once, so a stop right after this reaches it
            self.child, self._adopted_fraction = adopted, adopted_fraction
        self._first = first
        self._task = asyncio.get_running_loop().create_task(
            self._run(adopted, adopted_fraction), name=f"keeper:{self.backend}"
        )
        self._task.add_done_callback(self._on_loop_end)
        return self._task

    def reconfigure(self, prepare: Prepare, ctx: StartContext, policy: RestartPolicy) -> None:
        """A reload that leaves this backend's launch identity as it is: later starts use the
        new settings; the running engine is not touched."""
        self._ctx, self._policy = ctx, policy
        self._starter.reconfigure(prepare, ctx, policy)
        self._sleep_mode.ctx = ctx

    @property
    def running(self) -> bool:
        """The keep-alive loop runs (it may be waiting to restart or for weights)."""
        return self._task is not None and not self._task.done()

    def _on_loop_end(self, task: asyncio.Task[None]) -> None:
        """The loop never ends on an exception by design; if a bug makes it, say so loudly."""
        if self._first is not None:
            self._first.settle(asyncio.CancelledError("the start was abandoned"))
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("keeper.crashed", backend=self.backend, error=f"{type(exc).__name__}: {exc}")
        self._ctx.sink(BackendFailed(self.backend, f"gpumgr internal error: {type(exc).__name__}: {exc}"))

    async def halt(self) -> None:
        """End the keep-alive loop (a start in flight is abandoned; its child stays known)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def stop(self, lease: GpuLease, drain: Drain | None = None) -> process.StopOutcome | None:
        """Stop the loop and the child's whole group; forget the record. Always ends in a
        ``stopped`` event, whatever the backend was doing (restarting, failed, downloading)."""
        lease.require(self.gpu_uuid)
        await self.halt()
        outcome = None
        child = self.child
        if child is not None and await child.group_alive_async():
            if drain is not None and not child.exited:
                await drain()  # ``draining`` first: the router skips it while requests finish
            self._ctx.sink(ChildStopping(self.backend, child.pid))
            outcome = await stop_engine(
                lease, self.gpu_uuid, child, self._ctx.stop, self._ctx.memory_released
            )
            self._ctx.sink(
                ChildStopped(self.backend, child.pid, outcome.killed, outcome.memory_released)
            )
        else:
            self._ctx.sink(BackendStopped(self.backend))
        await asyncio.to_thread(self._ctx.records.remove, self.backend)
        self.child = None
        self._sleep_mode.asleep = False
        return outcome

    async def stop_unresponsive(self, lease: GpuLease, reason: str) -> bool:
        """Stop a child that is alive but does not answer (the manager saw it hang); the loop
        then treats the exit as a crash, so the restart policy and its limits apply. False when
        there is no running child."""
        child = self.child
        if child is None or child.exited:
            return False
        log.warning("keeper.unresponsive", backend=self.backend, pid=child.pid, reason=reason)
        self.last_error = f"unresponsive: {reason}"
        await stop_engine(lease, self.gpu_uuid, child, self._ctx.stop, self._ctx.memory_released)
        return True

    @property
    def spec(self) -> LaunchSpec | None:
        """The launch of the last start attempt (set once prepared, before it is known to work)."""
        return self._starter.spec

    @property
    def last_startup_s(self) -> float | None:
        """Seconds from spawn to ``/health`` 200 at the last start."""
        return self._starter.startup_s

    @property
    def running_fraction(self) -> float | None:
        """The slice the live engine runs with (None when none runs or it is unknown)."""
        if self.child is None or self.child.exited:
            return None
        return self.spec.fraction if self.spec is not None else self._adopted_fraction

    # -- the loop --------------------------------------------------------------------------
    def _on_spawned(self, child: process.ChildProcess, spec: LaunchSpec) -> None:
        self.child = child  # the starter keeps the spec

    async def _run(
        self, adopted: process.ChildProcess | None, adopted_fraction: float | None = None
    ) -> None:
        history = CrashHistory()
        hint = PrepareHint()
        try:
            taken = adopted is not None and await self._take_over(adopted, adopted_fraction)
        finally:
            self.settled.set()
        child = adopted if taken else None
        while True:
            pid: int | None
            if child is None:
                first, self._first = self._first, None
                started = await self._starter.start(hint, first, self.last_error)
                if isinstance(started, Refused):
                    self.last_error = started.detail
                    return  # failed with the plan's reason
                if isinstance(started, StartFailed):
                    pid, returncode, oom, err = (
                        started.pid, started.returncode, started.oom, started.last_error
                    )
                else:
                    child = started
            if child is not None:
                returncode = await self._watch(child)
                if self.asleep:  # died asleep: it is not brought back awake on its own
                    self._sleep_mode.asleep = False
                    self._ctx.sink(ChildExited(self.backend, child.pid, returncode, False,
                                               "exited while asleep; not restarted"))
                    await self._clean_up(child)
                    self.child = None
                    return
                lines = await asyncio.to_thread(
                    tail_lines, log_path(self._ctx.log_dir, self.backend), 30,
                    since_offset=child.log_offset,
                )
                pid, oom = child.pid, self._ctx.find_oom(lines)
                err = self.last_error if self.last_error.startswith("unresponsive") else ""
                err = self._ctx.last_error(lines) or err
            fraction = self.spec.fraction if self.spec else None
            delay_s, history = self._after_exit(history, pid, returncode, oom is not None, err,
                                                oom.kind if oom is not None else None, fraction)
            if child is not None:
                await self._clean_up(child)
            self.child = child = None
            if delay_s is None:
                return
            hint = (
                PrepareHint(after_oom_fraction=fraction, oom_kind=oom.kind)
                if oom is not None else PrepareHint()
            )
            await pause(delay_s)

    async def _clean_up(self, child: process.ChildProcess) -> None:
        """After an exit: orphans (vLLM's EngineCore outliving its API server) are stopped and
        the memory awaited under the lease; the record goes."""
        if await child.group_alive_async():
            async with self._ctx.locks.lease(self.gpu_uuid, f"clean up {self.backend}") as lease:
                await stop_engine(
                    lease, self.gpu_uuid, child, self._ctx.stop, self._ctx.memory_released
                )
        await asyncio.to_thread(self._ctx.records.remove, self.backend)

    async def _take_over(self, child: process.ChildProcess, fraction: float | None) -> bool:
        """Adopt a recorded child: it counts once it answers ``/health`` (it may still be loading
        if the old daemon died mid-start). One that never does is stopped and started afresh."""
        self.child = child
        self._adopted_fraction = fraction
        self._ctx.sink(ChildStarted(self.backend, child.pid, self.port, fraction, adopted=True))
        # It may still be initialising (the old daemon died mid-start): no other start on this
        # GPU until it answers, as for any start (DESIGN §3).
        async with self._ctx.locks.lease(self.gpu_uuid, f"adopt {self.backend}") as lease:
            try:
                startup_s = await wait_ready(child, self.health_url, self._ctx.timing,
                                             self._ctx.http)
            except (ChildGone, TimeoutError) as exc:
                log.warning("keeper.adopt_failed", backend=self.backend, error=str(exc))
                await stop_engine(
                    lease, self.gpu_uuid, child, self._ctx.stop, self._ctx.memory_released
                )
                await asyncio.to_thread(self._ctx.records.remove, self.backend)
                self.child = None
                self._ctx.sink(Restarting(self.backend, 0.0, 1, f"adopted pid {child.pid}: {exc}"))
                return False
        if not await self._sleep_mode.adopted_asleep(child):
            self._ctx.sink(ChildReady(self.backend, child.pid, startup_s, adopted=True))
        return True

    # -- sleep mode (actions.sleep_mode) ---------------------------------------------------
    @property
    def asleep(self) -> bool:
        """The engine is in vLLM sleep mode (the process lives, nothing is served)."""
        return self._sleep_mode.asleep

    def found_asleep(self) -> None:
        """The probe found the engine asleep though gpumgr did not put it to sleep."""
        self._sleep_mode.found(self.child)

    @property
    def engine(self) -> EngineClient:
        """The engine's HTTP endpoints, over the daemon's one client."""
        return EngineClient(self._ctx.http, self.base_url, self.backend, self._api_key,
                            self._served_name)

    async def sleep(self, lease: GpuLease, level: int, detail: str,
                    drain: Drain | None = None) -> None:
        """Put the engine to sleep (vLLM ``POST /sleep?level=N``): ``draining`` first, then
        ``sleeping``. Raises ``BackendUnavailable`` when the engine refuses."""
        lease.require(self.gpu_uuid)
        await self._sleep_mode.sleep(self.child, level, detail, drain)

    async def wake(self, lease: GpuLease) -> float:
        """Wake the engine (``POST /wake_up``) and check it answers; the seconds it took.
        Raises ``BackendUnavailable``."""
        lease.require(self.gpu_uuid)
        return await self._sleep_mode.wake(self.child)

    async def _watch(self, child: process.ChildProcess) -> int | None:
        """Wait for the child's exit, copy-truncating its log now and then."""
        path = log_path(self._ctx.log_dir, self.backend)
        while True:
            try:
                return await asyncio.wait_for(child.wait(), timeout=_LOG_ROTATE_CHECK_S)
            except asyncio.TimeoutError:
                rotated = await asyncio.to_thread(
                    rotate_live, path, self._ctx.log_max_bytes, self._ctx.log_backups
                )
                if rotated:
                    child.log_offset = 0

    def _after_exit(
        self,
        history: CrashHistory,
        pid: int | None,
        returncode: int | None,
        oom: bool,
        err: str,
        oom_kind: str | None = None,
        fraction: float | None = None,
    ) -> tuple[float | None, CrashHistory]:
        """Report the exit and the policy's answer in the same tick (so the status shows one
        change: the new state with no pid and the restart counted), then return (delay before
        the next try | None, history)."""
        if pid is not None:
            self._ctx.sink(ChildExited(self.backend, pid, returncode, oom, err))
        self.last_error = err
        decision = decide(self._policy, history, self._clock(), oom=oom, oom_kind=oom_kind,
                          failed_fraction=fraction)
        if decision.action is RestartAction.FAIL:
            self._fail(f"{decision.reason}; last error: {err}" if err else decision.reason)
            return None, decision.history
        why = f"exited ({returncode}); {decision.reason}" if pid is not None else decision.reason
        self._ctx.sink(Restarting(
            self.backend, decision.delay_s, decision.attempt, f"{why}: {err}" if err else why
        ))
        return decision.delay_s, decision.history

    def _fail(self, detail: str) -> None:
        self._ctx.sink(BackendFailed(self.backend, detail))
