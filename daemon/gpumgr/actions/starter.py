"""One start attempt of a keeper's engine, from its weights to ``/health`` 200.

Before the spawn the weights are made local (retried with the restart policy's back-off while
the hub fails) and the port is waited for while a foreign process holds it (never signalled).
A slice that would repeat an out-of-memory failure is refused. The spawn runs under the GPU's
lease: the operator's for a first attempt the operator waits for, else one of its own.

The keeper owns the child and decides what follows an attempt (``actions.keeper``); the starter
only reports what the attempt gave: a healthy child, a failed start, or the plan's refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from gpumgr.errors import GpumgrError, PlanInfeasible
from gpumgr.supervisor import process
from gpumgr.supervisor.events import BackendDown, BackendFailed
from gpumgr.supervisor.restart import RestartPolicy

from .lease import GpuLease
from .start import LaunchSpec, Prepare, PrepareHint, StartContext, StartFailed, start_engine
from .stop import stop_engine

log = structlog.get_logger(__name__)

EnsureWeights = Callable[[], Awaitable[None]]
"""Makes the backend's weights local (downloading if needed); raises ``GpumgrError``."""

OnSpawned = Callable[[process.ChildProcess, LaunchSpec], None]
"""Told of the child the moment it is spawned, before it is healthy (so a stop reaches it)."""


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


@dataclass(frozen=True)
class Refused:
    """The plan offers no start: the backend is ``failed`` with this reason (already said)."""

    detail: str


async def pause(delay_s: float) -> None:
    """Wait between tries; cancelling the keeper's task (``halt()``) interrupts it."""
    if delay_s > 0:
        await asyncio.sleep(delay_s)


class EngineStarter:
    """One start attempt at a time for one keeper: weights, port, slice, spawn, ``/health``."""

    def __init__(
        self,
        backend: str,
        gpu_uuid: str,
        port: int,
        prepare: Prepare,
        ctx: StartContext,
        policy: RestartPolicy,
        on_spawned: OnSpawned,
        *,
        weights: EnsureWeights | None = None,
        port_recheck_s: float = 5.0,
    ) -> None:
        self.backend = backend
        self.gpu_uuid = gpu_uuid
        self.port = port
        self._prepare = prepare
        self._ctx = ctx
        self._policy = policy
        self._on_spawned = on_spawned
        self._weights = weights
        self._port_recheck_s = port_recheck_s
        self._spawned: process.ChildProcess | None = None
        self.spec: LaunchSpec | None = None
        """The launch of the last attempt (set once prepared, before it is known to work)."""
        self.startup_s: float | None = None
        """Seconds from spawn to ``/health`` 200 at the last successful start."""

    def reconfigure(self, prepare: Prepare, ctx: StartContext, policy: RestartPolicy) -> None:
        """Later attempts use the new settings."""
        self._prepare, self._ctx, self._policy = prepare, ctx, policy

    async def start(
        self, hint: PrepareHint, first: FirstAttempt | None, last_error: str
    ) -> process.ChildProcess | StartFailed | Refused:
        """One attempt (``last_error``: the keeper's, told with a refusal after an out-of-memory
        exit). The first attempt an operator waits for runs under the operator's lease and
        reports its outcome."""
        try:
            started = await self._attempt(hint, first.lease if first is not None else None,
                                          last_error)
        except BaseException as exc:
            if first is not None:
                first.settle(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            raise
        if first is not None:
            if isinstance(started, process.ChildProcess):
                first.settle(self.startup_s or 0.0)
            elif isinstance(started, Refused):
                first.settle(PlanInfeasible(started.detail or "the start failed"))
            else:
                first.settle(started)
        return started

    def _spawned_now(self, child: process.ChildProcess, spec: LaunchSpec) -> None:
        self._spawned, self.spec = child, spec
        self._on_spawned(child, spec)

    async def _attempt(
        self, hint: PrepareHint, lease: GpuLease | None, last_error: str
    ) -> process.ChildProcess | StartFailed | Refused:
        self._spawned = None
        await self._ensure_weights()
        await self._wait_for_port()
        try:
            if lease is not None:
                started = await start_engine(
                    lease, self._ctx, self._checked_prepare, hint, on_spawned=self._spawned_now
                )
            else:
                async with self._ctx.locks.lease(self.gpu_uuid, f"start {self.backend}") as own:
                    started = await start_engine(
                        own, self._ctx, self._checked_prepare, hint, on_spawned=self._spawned_now
                    )
        except StartFailed as exc:
            return exc
        except PlanInfeasible as exc:
            oom_error = last_error if hint.after_oom_fraction is not None else ""
            detail = f"{exc}; last error: {oom_error}" if oom_error else str(exc)
            self._ctx.sink(BackendFailed(self.backend, detail))
            return Refused(detail)
        except Exception as exc:  # noqa: BLE001 - NVML gone, unreadable snapshot, ...
            # ...is a failed start like any other: the restart policy decides, and its limit
            # ends in ``failed`` with this reason instead of a keeper that silently died.
            reason = f"{type(exc).__name__}: {exc}"
            log.error("keeper.start_error", backend=self.backend, error=reason)
            spawned = self._spawned
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
        self.startup_s = started.startup_s
        return started.child

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
                await pause(delay_s)

    async def _wait_for_port(self) -> None:
        """A foreign process on the port is never signalled: wait (and say so) until it is gone.
        Said again at every look: a probe of the stranger (a timeout, say) may have put its own
        reason in the status meanwhile, and who holds the port is what the operator needs."""
        while True:
            holder = await asyncio.to_thread(self._ctx.system.port_listener_pid, self.port)
            if holder is None:
                return
            who = f"pid {holder}" if holder else "a process of another user"
            self._ctx.sink(BackendDown(self.backend,
                                       f"port {self.port} is held by {who} (not started by gpumgr)"))
            await pause(self._port_recheck_s)

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
