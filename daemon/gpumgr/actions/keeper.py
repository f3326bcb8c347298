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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from gpumgr.engines.vllm_client import EngineClient
from gpumgr.errors import BackendUnavailable, GpumgrError, PlanInfeasible
from gpumgr.supervisor import process
from gpumgr.supervisor.events import (
    BackendDown,
    BackendFailed,
    BackendStopped,
    ChildExited,
    ChildReady,
    ChildStarted,
    ChildStopped,
    ChildStopping,
    Restarting,
    Sleeping,
    Woken,
)
from gpumgr.supervisor.logs import log_path, rotate_live, tail_lines
from gpumgr.supervisor.restart import CrashHistory, RestartAction, RestartPolicy, decide

from .lease import GpuLease
from .start import (
    ChildGone,
    LaunchSpec,
    Prepare,
    PrepareHint,
    StartContext,
    StartFailed,
    start_engine,
    wait_ready,
)
from .stop import Drain, stop_engine

log = structlog.get_logger(__name__)

_LOG_ROTATE_CHECK_S = 60.0

EnsureWeights = Callable[[], Awaitable[None]]
"""Makes the backend's weights local (downloading if needed); raises ``GpumgrError``."""


@dataclass
class FirstAttempt:
    """A start an operator waits for (``gpumgr start``, a swap): it runs under the caller's
    lease (held across stop → start → rollback), and its outcome is reported once: the
    healthy engine's startup seconds, or the exception that ended the attempt. Later restarts
    are the restart policy's, under their own leases."""

    lease: GpuLease
    outcome: asyncio.Future[float] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def settle(self, result: float | BaseException) -> None:
        if self.outcome.done():
            return
        if isinstance(result, BaseException):
            self.outcome.set_exception(result)
        else:
            self.outcome.set_result(result)


class BackendKeeper:
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
        self._prepare = prepare
        self._ctx = ctx
        self._policy = policy
        self._weights = weights
        self.health_url = health_url or f"http://127.0.0.1:{port}/health"
        """Where ``/health`` answers (checked before an adopted engine counts as serving)."""
        self.base_url = self.health_url.removesuffix("/health")
        self._served_name = served_name
        self._api_key = api_key
        self.asleep = False
        """The engine is in vLLM sleep mode (the process lives, nothing is served)."""
        self._port_recheck_s = port_recheck_s
        self._clock = clock
        self.last_error = ""
        """The last error line of the engine's log at its last unexpected exit."""
        self.last_startup_s: float | None = None
        """Seconds from spawn to ``/health`` 200 at the last start."""
        self.child: process.ChildProcess | None = None
        self.spec: LaunchSpec | None = None
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
        self._prepare, self._ctx, self._policy = prepare, ctx, policy

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
        self.asleep = False
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
    def running_fraction(self) -> float | None:
        """The slice the live engine runs with (None when none runs or it is unknown)."""
        if self.child is None or self.child.exited:
            return None
        return self.spec.fraction if self.spec is not None else self._adopted_fraction

    # -- the loop --------------------------------------------------------------------------
    def _on_spawned(self, child: process.ChildProcess, spec: LaunchSpec) -> None:
        self.child = child
        self.spec = spec

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
                started = await self._start_once(hint)
                if started is None:
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
                    self.asleep = False
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
            await self._sleep(delay_s)

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
        if await self._is_sleeping():
            self.asleep = True
            self._ctx.sink(Sleeping(self.backend, child.pid, f"pid {child.pid} adopted asleep"))
        else:
            self._ctx.sink(ChildReady(self.backend, child.pid, startup_s, adopted=True))
        return True

    # -- sleep mode ------------------------------------------------------------------------
    def found_asleep(self) -> None:
        """The probe found the engine asleep though gpumgr did not put it to sleep (vLLM's
        ``/sleep`` needs no key): it holds a sleeper now, which only ``gpumgr wake`` wakes."""
        if self.child is not None and not self.child.exited:
            self.asleep = True

    @property
    def engine(self) -> EngineClient:
        """The engine's HTTP endpoints, over the daemon's one client."""
        return EngineClient(self._ctx.http, self.base_url, self.backend, self._api_key,
                            self._served_name)

    async def _is_sleeping(self) -> bool:
        return await self.engine.is_sleeping()

    async def sleep(self, lease: GpuLease, level: int, detail: str,
                    drain: Drain | None = None) -> None:
        """Put the engine to sleep (vLLM ``POST /sleep?level=N``): ``draining`` first, then
        ``sleeping``. Raises ``BackendUnavailable`` when the engine refuses."""
        lease.require(self.gpu_uuid)
        child = self.child
        if child is None or child.exited:
            raise BackendUnavailable(f"{self.backend} has no running engine to put to sleep")
        if drain is not None:
            await drain()
        await self.engine.sleep(level, self._ctx.timing.start_timeout_s)
        self.asleep = True
        self._ctx.sink(Sleeping(self.backend, child.pid, detail))

    async def wake(self, lease: GpuLease) -> float:
        """Wake the engine (``POST /wake_up``), then check it with a 1-token request before the
        router is told it is up; the seconds it took. Raises ``BackendUnavailable``."""
        lease.require(self.gpu_uuid)
        child = self.child
        if child is None or child.exited or not self.asleep:
            raise BackendUnavailable(f"{self.backend} is not asleep")
        t0 = time.monotonic()
        # `starting` from the /wake_up call on, not after it: the router's hold (GPUMGR_HOLD_S)
        # sees the wake with its eta_s; a probe meanwhile finds it still asleep and leaves it
        self._ctx.sink(Woken(self.backend, child.pid))
        try:
            await self.engine.wake(self._ctx.timing.start_timeout_s)
        except BaseException:
            self._ctx.sink(Sleeping(self.backend, child.pid, "asleep: the wake failed"))
            raise
        self.asleep = False
        await self.engine.answers_one_token()
        wake_s = time.monotonic() - t0
        if self._ctx.startup_times is not None:  # the next wake is announced with this time
            await asyncio.to_thread(self._ctx.startup_times.record_wake, self.backend, wake_s)
        self._ctx.sink(ChildReady(self.backend, child.pid, wake_s))
        return wake_s

    async def _ensure_weights(self) -> None:
        """Weights first, retried with the restart policy's back-off while the hub fails:
        a hub that is unreachable for a second at boot must not fail the backend for good."""
        if self._weights is None:
            return
        attempt = 0
        while True:
            try:
                await self._weights()
                return
            except Exception as exc:  # noqa: BLE001 - the hub's own errors too: retried, not fatal
                why = str(exc) if isinstance(exc, GpumgrError) else f"{type(exc).__name__}: {exc}"
                attempt += 1
                delay_s = self._policy.backoff_s(attempt)
                log.warning("weights.retry", backend=self.backend, error=why, delay_s=delay_s)
                self._ctx.sink(BackendDown(self.backend, f"retrying in {delay_s:g} s: {why}"))
                await self._sleep(delay_s)

    async def _wait_for_port(self) -> None:
        """A foreign process on the port is never signalled: wait (and say so) until it is gone."""
        said = ""
        while True:
            holder = await asyncio.to_thread(self._ctx.system.port_listener_pid, self.port)
            if holder is None:
                return
            who = f"pid {holder}" if holder else "a process of another user"
            detail = f"port {self.port} is held by {who} (not started by gpumgr)"
            if said != detail:
                self._ctx.sink(BackendDown(self.backend, detail))
                said = detail
            await self._sleep(self._port_recheck_s)

    async def _start_once(self, hint: PrepareHint) -> process.ChildProcess | StartFailed | None:
        """One start attempt. None: do not go on (failed with the plan's reason). The first
        attempt an operator waits for runs under the operator's lease and reports its outcome."""
        first, self._first = self._first, None
        try:
            started = await self._attempt(hint, first.lease if first is not None else None)
        except BaseException as exc:
            if first is not None:
                first.settle(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            raise
        if first is not None:
            if isinstance(started, process.ChildProcess):
                first.settle(self.last_startup_s or 0.0)
            else:
                first.settle(started or PlanInfeasible(self.last_error or "the start failed"))
        return started

    async def _attempt(
        self, hint: PrepareHint, lease: GpuLease | None
    ) -> process.ChildProcess | StartFailed | None:
        await self._ensure_weights()
        await self._wait_for_port()
        try:
            if lease is not None:
                started = await start_engine(
                    lease, self._ctx, self._checked_prepare, hint, on_spawned=self._on_spawned
                )
            else:
                async with self._ctx.locks.lease(self.gpu_uuid, f"start {self.backend}") as own:
                    started = await start_engine(
                        own, self._ctx, self._checked_prepare, hint, on_spawned=self._on_spawned
                    )
        except StartFailed as exc:
            return exc
        except PlanInfeasible as exc:
            oom_error = self.last_error if hint.after_oom_fraction is not None else ""
            detail = f"{exc}; last error: {oom_error}" if oom_error else str(exc)
            self._fail(detail)
            self.last_error = detail
            return None
        except Exception as exc:  # noqa: BLE001 - NVML gone, unreadable snapshot, ...
            # ...is a failed start like any other: the restart policy decides, and its limit
            # ends in ``failed`` with this reason instead of a keeper that silently died.
            reason = f"{type(exc).__name__}: {exc}"
            log.error("keeper.start_error", backend=self.backend, error=reason)
            spawned = self.child
            if spawned is not None and await spawned.group_alive_async():
                async with contextlib.AsyncExitStack() as stack:
                    held = lease if lease is not None else await stack.enter_async_context(
                        self._ctx.locks.lease(self.gpu_uuid, f"clean up {self.backend}")
                    )
                    await stop_engine(
                        held, self.gpu_uuid, spawned, self._ctx.stop, self._ctx.memory_released
                    )
            return StartFailed(self.backend, reason, oom=None, last_error=reason, returncode=None)
        self.spec = started.spec
        self.last_startup_s = started.startup_s
        return started.child

    async def _checked_prepare(self, hint: PrepareHint) -> LaunchSpec:
        """The manager's ``prepare``, refusing a slice that would repeat an out-of-memory
        failure (a larger one after "no room for the KV cache", a smaller one after a failed
        allocation)."""
        spec = await self._prepare(hint)
        if hint.refuses(spec.fraction):
            way = "larger" if hint.needs_larger else "smaller"
            raise PlanInfeasible(
                f"{self.backend}: out of memory with --gpu-memory-utilization "
                f"{hint.after_oom_fraction:g} and no {way} slice fits (the plan offers "
                f"{spec.fraction:g})"
            )
        self.spec = spec
        return spec

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

    async def _sleep(self, delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)  # halt() cancels the task, so this is interruptible
