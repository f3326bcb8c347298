"""The keep-alive loop of one managed engine: start it, watch it, restart it per policy, stop it.

Each managed backend has exactly one keeper, and only its keeper touches its child. Starts go
through ``start_engine`` (GPU lock, readiness); what follows an exit is decided by the pure
restart policy. The keeper reports through events and keeps its own ``state`` view.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import httpx2
import structlog

from gpumgr.backend_state import BackendState
from gpumgr.errors import PlanInfeasible
from gpumgr.supervisor import process
from gpumgr.supervisor.events import (
    BackendDown,
    BackendFailed,
    ChildExited,
    ChildReady,
    ChildStarted,
    ChildStopped,
    ChildStopping,
    Restarting,
)
from gpumgr.supervisor.logs import log_path, rotate_live, tail_lines
from gpumgr.supervisor.records import port_listener_pid
from gpumgr.supervisor.restart import CrashHistory, RestartAction, RestartPolicy, decide

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

log = structlog.get_logger(__name__)

_LOG_ROTATE_CHECK_S = 60.0


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
        stop_timeout_s: float = 30.0,
        memory_released: process.MemoryReleased | None = None,
        memory_timeout_s: float = 30.0,
        port_recheck_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.gpu_uuid = gpu_uuid
        self.port = port
        self._prepare = prepare
        self._ctx = ctx
        self._policy = policy
        self._stop_timeout_s = stop_timeout_s
        self._memory_released = memory_released
        self._memory_timeout_s = memory_timeout_s
        self._port_recheck_s = port_recheck_s
        self._clock = clock
        self.state = BackendState.STOPPED
        self.detail = ""
        self.restarts = 0
        self.last_error = ""
        """The last error line of the engine's log at its last unexpected exit."""
        self.child: process.ChildProcess | None = None
        self.spec: LaunchSpec | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._adopted_fraction: float | None = None

    # -- public ----------------------------------------------------------------------------
    def launch(
        self, adopted: process.ChildProcess | None = None, adopted_fraction: float | None = None
    ) -> asyncio.Task[None]:
        """Start the keep-alive loop (optionally around an adopted child and its slice) as a task."""
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"{self.backend}: keeper already running")
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(
            self._run(adopted, adopted_fraction), name=f"keeper:{self.backend}"
        )
        self._task.add_done_callback(self._on_loop_end)
        return self._task

    def _on_loop_end(self, task: asyncio.Task[None]) -> None:
        """The loop never ends on an exception by design; if a bug makes it, say so loudly."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("keeper.crashed", backend=self.backend, error=f"{type(exc).__name__}: {exc}")
        self._fail(f"gpumgr internal error: {type(exc).__name__}: {exc}")

    async def stop(self) -> process.StopOutcome | None:
        """Stop the loop and the child's whole group; forget the record. Idempotent."""
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        outcome = None
        child = self.child
        if child is not None and child.group_alive():
            self._set(BackendState.STOPPING, "stopping")
            self._ctx.sink(ChildStopping(self.backend, child.pid))
            outcome = await self._stop_group(child)
            self._ctx.sink(
                ChildStopped(self.backend, child.pid, outcome.killed, outcome.memory_released)
            )
        self._ctx.records.remove(self.backend)
        self.child = None
        self._set(BackendState.STOPPED, "stopped")
        return outcome

    async def restart_unresponsive(self, reason: str) -> bool:
        """Stop a child that is alive but does not answer (a hang the health probes saw); the
        loop then treats the exit as a crash, so the restart policy and its limits apply.
        False when there is no running child to restart. A child the keeper still sees as
        starting counts too: the probes may have seen it up (and then hang) before the keeper's
        own readiness check finished."""
        child = self.child
        if child is None or child.exited or self.state not in (BackendState.UP, BackendState.STARTING):
            return False
        log.warning("keeper.unresponsive", backend=self.backend, pid=child.pid, reason=reason)
        self._set(BackendState.RESTARTING, f"unresponsive: {reason}")
        await self._stop_group(child)
        return True

    async def _stop_group(self, child: process.ChildProcess) -> process.StopOutcome:
        """Stop the child's group and wait (bounded) until the GPU shows its memory back, so
        the next plan never counts memory that is still held."""
        return await process.stop(
            child,
            term_timeout_s=self._stop_timeout_s,
            memory_released=self._memory_released,
            memory_timeout_s=self._memory_timeout_s,
        )

    # -- the loop --------------------------------------------------------------------------
    def _set(self, state: BackendState, detail: str) -> None:
        if state != self.state or detail != self.detail:
            log.info("keeper.state", backend=self.backend, old=self.state, new=state, detail=detail)
        self.state = state
        self.detail = detail

    def _on_spawned(self, child: process.ChildProcess, spec: LaunchSpec) -> None:
        self.child = child
        self.spec = spec

    async def _run(
        self, adopted: process.ChildProcess | None, adopted_fraction: float | None = None
    ) -> None:
        history = CrashHistory()
        hint = PrepareHint()
        taken = adopted is not None and await self._take_over(adopted, adopted_fraction)
        child = adopted if taken else None
        while not self._stopping:
            if child is None:
                started = await self._start_once(hint)
                if started is None:
                    return  # stopping, or failed with the plan's reason
                if isinstance(started, StartFailed):
                    exit_pid = self.child.pid if self.child else 0
                    returncode, oom, err = started.returncode, started.oom, started.last_error
                else:
                    child = started
            if child is not None:
                returncode = await self._watch(child)
                if self._stopping:
                    return
                lines = tail_lines(
                    log_path(self._ctx.log_dir, self.backend), 30, since_offset=child.log_offset
                )
                exit_pid, oom, err = child.pid, self._ctx.is_oom(lines), self._ctx.last_error(lines)
                if child.group_alive():  # e.g. vLLM's EngineCore outliving its API server
                    await self._stop_group(child)
                self._ctx.records.remove(self.backend)
            fraction = self.spec.fraction if self.spec else None
            self.child = child = None
            delay_s, history = self._after_crash(history, exit_pid, returncode, oom, err)
            if delay_s is None:
                return
            hint = PrepareHint(after_oom_fraction=fraction) if oom else PrepareHint()
            await self._sleep(delay_s)

    @property
    def running_fraction(self) -> float | None:
        """The slice the live engine runs with (None when none runs or it is unknown)."""
        if self.child is None or self.child.exited:
            return None
        return self.spec.fraction if self.spec is not None else self._adopted_fraction

    async def _take_over(self, child: process.ChildProcess, fraction: float | None) -> bool:
        """Adopt a recorded child: it counts once it answers ``/health`` (it may still be loading
        if the old daemon died mid-start). One that never does is stopped and started afresh."""
        self.child = child
        self._adopted_fraction = fraction
        self._ctx.sink(ChildStarted(self.backend, child.pid, self.port, fraction, adopted=True))
        self._set(BackendState.STARTING, "adopted; waiting for /health")
        # It may still be initialising (the old daemon died mid-start): no other start on this
        # GPU until it answers, as for any start (DESIGN §3).
        async with self._ctx.locks.for_gpu(self.gpu_uuid), httpx2.AsyncClient() as client:
            try:
                startup_s = await wait_ready(
                    child, f"http://127.0.0.1:{self.port}/health", self._ctx.timing, client
                )
            except (ChildGone, TimeoutError) as exc:
                log.warning("keeper.adopt_failed", backend=self.backend, error=str(exc))
                await self._stop_group(child)
                self._ctx.records.remove(self.backend)
                self.child = None
                return False
        self._ctx.sink(ChildReady(self.backend, child.pid, startup_s, adopted=True))
        self._set(BackendState.UP, f"adopted pid {child.pid}")
        return True

    async def _start_once(self, hint: PrepareHint) -> process.ChildProcess | StartFailed | None:
        """One start attempt. None: do not go on (stopping, or failed with the plan's reason)."""
        while not self._stopping:
            holder = port_listener_pid(self.port)
            if holder is None:
                break
            who = f"pid {holder}" if holder else "a process of another user"
            detail = f"port {self.port} is held by {who} (not started by gpumgr)"
            if self.detail != detail:
                self._ctx.sink(BackendDown(self.backend, detail))
            self._set(BackendState.DOWN, detail)
            await self._sleep(self._port_recheck_s)
        if self._stopping:
            return None
        self._set(BackendState.STARTING, "starting")
        try:
            child, spec = await start_engine(
                self._ctx, self.gpu_uuid, self._checked_prepare, hint, on_spawned=self._on_spawned
            )
        except StartFailed as exc:
            return exc
        except PlanInfeasible as exc:
            oom_error = self.last_error if hint.after_oom_fraction is not None else ""
            self._fail(f"{exc}; last error: {oom_error}" if oom_error else str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - NVML gone, unreadable snapshot, disk full...
            # ...is a failed start like any other: the restart policy decides, and its limit
            # ends in ``failed`` with this reason instead of a keeper that silently died.
            reason = f"{type(exc).__name__}: {exc}"
            log.error("keeper.start_error", backend=self.backend, error=reason)
            if self.child is not None and self.child.group_alive():
                await self._stop_group(self.child)
            return StartFailed(self.backend, reason, oom=False, last_error=reason, returncode=None)
        self.spec = spec
        self._set(BackendState.UP, f"pid {child.pid} healthy")
        return child

    async def _checked_prepare(self, hint: PrepareHint) -> LaunchSpec:
        """The daemon's ``prepare``, refusing to reuse a slice that just ran out of memory."""
        spec = await self._prepare(hint)
        if hint.after_oom_fraction is not None and spec.fraction >= hint.after_oom_fraction:
            raise PlanInfeasible(
                f"{self.backend}: out of memory with --gpu-memory-utilization "
                f"{hint.after_oom_fraction:g} and no smaller slice fits (the plan offers "
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

    def _after_crash(
        self,
        history: CrashHistory,
        pid: int,
        returncode: int | None,
        oom: bool,
        err: str,
    ) -> tuple[float | None, CrashHistory]:
        """Report the exit and apply the policy: (delay before the next try | None, history)."""
        self._ctx.sink(ChildExited(self.backend, pid, returncode, oom, err))
        self.last_error = err
        decision = decide(self._policy, history, self._clock(), oom=oom)
        if decision.action is RestartAction.FAIL:
            self._fail(f"{decision.reason}; last error: {err}" if err else decision.reason)
            return None, decision.history
        self.restarts += 1
        self._ctx.sink(Restarting(self.backend, decision.delay_s, decision.attempt))
        detail = f"exited ({returncode}); {decision.reason}" + (f": {err}" if err else "")
        self._set(BackendState.RESTARTING, detail)
        return decision.delay_s, decision.history

    def _fail(self, detail: str) -> None:
        self._set(BackendState.FAILED, detail)
        self._ctx.sink(BackendFailed(self.backend, detail))

    async def _sleep(self, delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)  # stop() cancels the task, so this is interruptible
