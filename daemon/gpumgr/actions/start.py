"""Start sequencing: one engine initialises at a time per GPU, and it counts as started only
when ``/health`` answers 200.

Two vLLM instances profiling memory at the same time charge each other's allocations to
themselves (DESIGN.md §3), so the GPU's lock is held from just before the inventory re-read
until the new engine is healthy or has failed. The launch itself is prepared *inside* the lock
by a callable the daemon passes in (inventory re-read → plan → command line), so each start
sees the memory every earlier start really took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import psutil
import structlog

from gpumgr.errors import BackendUnavailable
from gpumgr.supervisor import process
from gpumgr.supervisor.events import ChildReady, ChildStarted, EventSink
from gpumgr.supervisor.logs import last_error, log_path, rotate_before_start, tail_lines
from gpumgr.supervisor.records import ChildRecord, ChildRecords

log = structlog.get_logger(__name__)

OomCheck = Callable[[list[str]], bool]
"""Recognises vLLM's out-of-memory messages in log lines (``gpumgr.engines.vllm.is_oom``)."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one engine; built by the daemon's ``prepare`` callable."""

    backend: str
    argv: list[str]
    env: dict[str, str]
    """The child's complete environment (the launch builder already started from the daemon's)."""
    port: int
    gpu_uuid: str
    fraction: float
    health_url: str = ""

    @property
    def url(self) -> str:
        return self.health_url or f"http://127.0.0.1:{self.port}/health"


@dataclass(frozen=True)
class PrepareHint:
    """Why a launch is being prepared again: after an OOM the same slice must not be reused."""

    after_oom_fraction: float | None = None


Prepare = Callable[[PrepareHint], Awaitable[LaunchSpec]]


@dataclass(frozen=True)
class StartTiming:
    start_timeout_s: float = 900.0
    poll_s: float = 0.25
    probe_timeout_s: float = 2.0


class StartFailed(BackendUnavailable):
    """The engine exited during start or did not become healthy in time."""

    def __init__(
        self, backend: str, message: str, *, oom: bool, last_error: str, returncode: int | None
    ) -> None:
        self.backend = backend
        self.oom = oom
        self.last_error = last_error
        self.returncode = returncode
        super().__init__(message)


class GpuLocks:
    """One ``asyncio.Lock`` per GPU UUID, created on first use."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def for_gpu(self, gpu_uuid: str) -> asyncio.Lock:
        return self._locks.setdefault(gpu_uuid, asyncio.Lock())


@dataclass
class StartContext:
    """What every start needs besides the launch: shared by the keepers of one daemon."""

    log_dir: Path
    records: ChildRecords
    locks: GpuLocks
    sink: EventSink
    is_oom: OomCheck
    timing: StartTiming = field(default_factory=StartTiming)
    last_error: Callable[[list[str]], str] = last_error
    """The log line that says why an engine died (the engine type's own reader, if any)."""
    log_max_bytes: int = 20 * 1024 * 1024
    log_backups: int = 3


async def wait_ready(
    child: process.ChildProcess,
    url: str,
    timing: StartTiming,
    client: httpx2.AsyncClient,
) -> float:
    """Poll ``url`` every ``timing.poll_s`` until it answers 200; the seconds it took.

    The child's exit wakes the wait at once (no need to reach the next poll), and the total is
    bounded by ``timing.start_timeout_s``. Raises ``TimeoutError`` or ``ChildGone``.
    """
    started = time.monotonic()
    deadline = started + timing.start_timeout_s
    while True:
        if child.exited:
            raise ChildGone()
        try:
            response = await client.get(url, timeout=timing.probe_timeout_s)
            if response.status_code == 200:
                return time.monotonic() - started
        except httpx2.HTTPError:
            pass  # vLLM binds late: refused connections are the normal "still loading"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no /health 200 within {timing.start_timeout_s:g}s")
        try:
            await asyncio.wait_for(child.wait(), timeout=min(timing.poll_s, remaining))
        except asyncio.TimeoutError:
            pass


class ChildGone(Exception):
    """The engine exited before it became healthy."""


def _record(spec: LaunchSpec, child: process.ChildProcess, cmdline: list[str]) -> ChildRecord:
    return ChildRecord(
        backend=spec.backend,
        pid=child.pid,
        pgid=child.pgid,
        create_time=child.create_time,
        cmdline=cmdline,
        port=spec.port,
        gpu_uuid=spec.gpu_uuid,
        fraction=spec.fraction,
        started_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )


async def start_engine(
    ctx: StartContext,
    gpu_uuid: str,
    prepare: Prepare,
    hint: PrepareHint,
    *,
    on_spawned: Callable[[process.ChildProcess, LaunchSpec], None] | None = None,
) -> tuple[process.ChildProcess, LaunchSpec]:
    """Prepare, spawn and wait for one engine under the GPU's lock; the healthy child.

    On an early exit or a timeout the child (and its group) is stopped and ``StartFailed``
    carries the last error lines and whether they show an out-of-memory failure.
    ``on_spawned`` lets the owner know the child before it is ready (so a stop can reach it).
    """
    lock = ctx.locks.for_gpu(gpu_uuid)
    async with lock:
        spec = await prepare(hint)  # inventory re-read and plan, inside the lock
        path = log_path(ctx.log_dir, spec.backend)
        rotate_before_start(path, ctx.log_max_bytes, ctx.log_backups)
        env = spec.env
        try:
            child = await process.spawn(spec.backend, spec.argv, env, path)
        except OSError as exc:
            raise StartFailed(
                spec.backend,
                f"{spec.backend}: cannot run {spec.argv[0]}: {exc.strerror or exc}",
                oom=False,
                last_error=str(exc),
                returncode=None,
            ) from None
        ctx.records.put(_record(spec, child, list(spec.argv)))
        if on_spawned is not None:
            on_spawned(child, spec)
        ctx.sink(ChildStarted(spec.backend, child.pid, spec.port, spec.fraction))
        log.info("start.spawned", backend=spec.backend, pid=child.pid, fraction=spec.fraction)
        async with httpx2.AsyncClient() as client:
            try:
                startup_s = await wait_ready(child, spec.url, ctx.timing, client)
            except (ChildGone, TimeoutError) as exc:
                raise await _start_failure(ctx, child, spec, exc) from None
        # The engine may rename itself once running (setproctitle): adopt against what it is now.
        ctx.records.put(_record(spec, child, _current_cmdline(child) or list(spec.argv)))
        ctx.sink(ChildReady(spec.backend, child.pid, startup_s))
        log.info("start.ready", backend=spec.backend, pid=child.pid, startup_s=round(startup_s, 2))
        return child, spec


def _current_cmdline(child: process.ChildProcess) -> list[str] | None:
    try:
        return list(psutil.Process(child.pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


async def _start_failure(
    ctx: StartContext, child: process.ChildProcess, spec: LaunchSpec, exc: Exception
) -> StartFailed:
    """Clean up after a failed start (group stopped, record dropped) and describe it."""
    timed_out = isinstance(exc, TimeoutError)
    if timed_out:
        await process.stop(child, term_timeout_s=10.0)
    else:
        await process.stop(child, term_timeout_s=5.0)  # orphans of a dead leader
    ctx.records.remove(spec.backend)
    lines = tail_lines(log_path(ctx.log_dir, spec.backend), 30, since_offset=child.log_offset)
    oom = ctx.is_oom(lines)
    err = str(exc) if timed_out else ctx.last_error(lines)
    if timed_out:
        message = f"{spec.backend}: {exc}"
    else:
        message = f"{spec.backend}: exited with status {child.returncode} during start: {err}"
    log.warning("start.failed", backend=spec.backend, oom=oom, error=err, timed_out=timed_out)
    return StartFailed(spec.backend, message, oom=oom, last_error=err, returncode=child.returncode)
