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
from typing import Any

import httpx2
import psutil
import structlog

from gpumgr.config.settings import Settings
from gpumgr.engines.vllm_kv import read_kv
from gpumgr.engines.vllm_log import OomFinding, OomKind, find_oom, vllm_last_error
from gpumgr.errors import BackendUnavailable
from gpumgr.fsio import RefusedPath
from gpumgr.plan.oom import Move, allows, rule_for
from gpumgr.supervisor import process
from gpumgr.supervisor.events import ChildReady, ChildStarted, EventSink, KvCacheMeasured
from gpumgr.supervisor.logs import last_error, log_path, rotate_before_start, tail_lines
from gpumgr.supervisor.records import ChildRecord, ChildRecords
from gpumgr.supervisor.system import REAL, System

from .lease import GpuLease, GpuLocks
from .startup_times import StartupTimes
from .stop import StopTiming, stop_engine

log = structlog.get_logger(__name__)

OomCheck = Callable[[list[str]], OomFinding | None]
"""Finds vLLM's out-of-memory failure in log lines (``gpumgr.engines.vllm_log.find_oom``)."""


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
    identity: dict[str, object] | None = None
    """The provider's launch identity (``actions.desired``), kept in the child's record so the
    next daemon knows whether an adopted engine is the one the configuration asks for."""
    kv_cache_tokens_planned: int | None = None
    """The plan's KV cache (vLLM); None: nothing to read back after the start."""
    kv_cache_tokens_min: int | None = None
    """The plan's promise: ``max_model_len`` × whole requests at once; less is ``degraded``."""
    kv_block_size: int = 16
    vllm_version: str | None = None

    @property
    def url(self) -> str:
        return self.health_url or f"http://127.0.0.1:{self.port}/health"


@dataclass(frozen=True)
class PrepareHint:
    """Why a launch is being prepared again: after an OOM the same slice must not be reused.

    Which way it must move depends on the kind: no room for the KV cache (or too little for one
    request at ``max_model_len``) needs a *larger* slice; any other out-of-memory failure (a
    start refused because others held memory, a failed allocation) a smaller one."""

    after_oom_fraction: float | None = None
    oom_kind: OomKind | None = None

    @property
    def needs_larger(self) -> bool:
        return rule_for(self.oom_kind).move is Move.LARGER

    @property
    def needs_smaller(self) -> bool:
        return self.after_oom_fraction is not None and not self.needs_larger

    def refuses(self, fraction: float) -> bool:
        """True when ``fraction`` would repeat the failure this hint remembers (the one
        out-of-memory table, ``gpumgr.plan.oom``)."""
        return not allows(self.oom_kind, self.after_oom_fraction, fraction)


Prepare = Callable[[PrepareHint], Awaitable[LaunchSpec]]


@dataclass(frozen=True)
class StartTiming:
    start_timeout_s: float = 900.0
    poll_s: float = 0.25
    probe_timeout_s: float = 2.0


class StartFailed(BackendUnavailable):
    """The engine exited during start, did not become healthy in time, or could not be
    recorded; its process group is stopped and its memory back. ``pid`` is set when the
    process had been announced (``ChildStarted``), so its exit is reported; None otherwise."""

    def __init__(
        self,
        backend: str,
        message: str,
        *,
        oom: OomFinding | None,
        last_error: str,
        returncode: int | None,
        pid: int | None = None,
    ) -> None:
        self.backend = backend
        self.oom = oom
        self.last_error = last_error
        self.returncode = returncode
        self.pid = pid
        super().__init__(message)


@dataclass
class StartContext:
    """What every start and stop needs besides the launch: shared by the keepers of a daemon."""

    log_dir: Path
    records: ChildRecords
    locks: GpuLocks
    sink: EventSink
    find_oom: OomCheck
    timing: StartTiming = field(default_factory=StartTiming)
    last_error: Callable[[list[str]], str] = last_error
    """The log line that says why an engine died (the engine type's own reader, if any)."""
    log_max_bytes: int = 20 * 1024 * 1024
    log_backups: int = 3
    stop: StopTiming = field(default_factory=StopTiming)
    memory_released: process.MemoryReleased | None = None
    """Asked after a stop whether the GPU shows the stopped pids' memory back."""
    system: System = REAL
    startup_times: StartupTimes | None = None
    """Where each measured start is remembered (for "loading 12 s of ~41 s")."""
    http: httpx2.AsyncClient = field(default_factory=httpx2.AsyncClient)
    """The one HTTP client every call to the engines goes through (the manager's)."""

    @classmethod
    def for_settings(
        cls, settings: Settings, log_dir: Path, records: ChildRecords, locks: GpuLocks,
        sink: EventSink, **rest: Any,
    ) -> StartContext:
        """The context of vLLM engines under ``settings`` (timeouts, logs, the OOM reader)."""
        vllm = settings.vllm
        return cls(
            log_dir=log_dir, records=records, locks=locks, sink=sink,
            find_oom=find_oom, last_error=vllm_last_error,
            timing=StartTiming(start_timeout_s=vllm.start_timeout_s,
                               poll_s=settings.health.starting_poll_s),
            log_max_bytes=vllm.log_max_bytes, log_backups=vllm.log_backups,
            stop=StopTiming(vllm.stop_timeout_s, vllm.memory_release_timeout_s), **rest,
        )


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


@dataclass(frozen=True)
class Started:
    """A healthy engine: its process, what it was launched with, and how long it took."""

    child: process.ChildProcess
    spec: LaunchSpec
    startup_s: float


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
        extra={"identity": spec.identity} if spec.identity is not None else {},
        spawn_marker=child.spawn_marker or "",
    )


async def start_engine(
    lease: GpuLease,
    ctx: StartContext,
    prepare: Prepare,
    hint: PrepareHint,
    *,
    on_spawned: Callable[[process.ChildProcess, LaunchSpec], None] | None = None,
) -> Started:
    """Prepare, spawn and wait for one engine under the caller's GPU lease; the healthy child.

    The lease is held from the inventory re-read until ``/health`` answers, so no other engine
    initialises on the card meanwhile. On an early exit, a timeout or a record that cannot be
    written, the child's group is stopped (memory back) and ``StartFailed`` says why, with the
    out-of-memory finding if the log shows one. ``on_spawned`` lets the owner know the child
    before it is ready (so a stop can reach it).
    """
    spec = await prepare(hint)  # inventory re-read and plan, inside the lease
    lease.require(spec.gpu_uuid)
    path = log_path(ctx.log_dir, spec.backend)
    await asyncio.to_thread(rotate_before_start, path, ctx.log_max_bytes, ctx.log_backups)
    try:
        child = await process.spawn(spec.backend, spec.argv, spec.env, path, ctx.system)
    except OSError as exc:
        why = str(exc) if isinstance(exc, RefusedPath) else (
            f"cannot run {spec.argv[0]}: {exc.strerror or exc}")  # RefusedPath: the log file
        raise StartFailed(
            spec.backend,
            f"{spec.backend}: {why}",
            oom=None,
            last_error=str(exc),
            returncode=None,
        ) from None
    if on_spawned is not None:
        on_spawned(child, spec)
    await _record_or_stop(lease, ctx, child, spec, list(spec.argv), announced=False)
    ctx.sink(ChildStarted(spec.backend, child.pid, spec.port, spec.fraction))
    log.info("start.spawned", backend=spec.backend, pid=child.pid, fraction=spec.fraction)
    try:
        startup_s = await wait_ready(child, spec.url, ctx.timing, ctx.http)
    except (ChildGone, TimeoutError) as exc:
        raise await _start_failure(lease, ctx, child, spec, exc) from None
    # The engine may rename itself once running (setproctitle): adopt against what it is now.
    cmdline = await asyncio.to_thread(_current_cmdline, child)
    await _record_or_stop(lease, ctx, child, spec, cmdline or list(spec.argv), announced=True)
    if ctx.startup_times is not None:
        await asyncio.to_thread(ctx.startup_times.record, spec.backend, startup_s)
    if spec.kv_cache_tokens_planned is not None:
        ctx.sink(await _kv_measured(path, child.pid, spec))
    ctx.sink(ChildReady(spec.backend, child.pid, startup_s))
    log.info("start.ready", backend=spec.backend, pid=child.pid, startup_s=round(startup_s, 2))
    return Started(child, spec, startup_s)


async def _kv_measured(path: Path, pid: int, spec: LaunchSpec) -> KvCacheMeasured:
    """The KV cache the ready engine reports in its log, against the plan's (vLLM >= 0.34 may
    commit less than planned after warm-up, and nothing else says so)."""
    lines = await asyncio.to_thread(tail_lines, path, 400)
    reading = read_kv(lines, spec.kv_cache_tokens_planned, spec.kv_cache_tokens_min,
                      spec.kv_block_size)  # fmt: skip
    log.info("start.kv_cache", backend=spec.backend, planned=reading.planned_tokens,
             actual=reading.actual_tokens, minimum=reading.minimum_tokens)  # fmt: skip
    return KvCacheMeasured(spec.backend, pid, reading.planned_tokens, reading.actual_tokens,
                           reading.shortfall or "", spec.vllm_version)  # fmt: skip


async def _record_or_stop(
    lease: GpuLease,
    ctx: StartContext,
    child: process.ChildProcess,
    spec: LaunchSpec,
    cmdline: list[str],
    *,
    announced: bool,
) -> None:
    """Write the child's record (off the loop: it fsyncs). A child gpumgr cannot record is a
    child the next daemon could not adopt and this one could lose track of: it is stopped at
    once, and the start fails naming the write error (disk full, read-only state directory)."""
    try:
        await asyncio.to_thread(ctx.records.put, _record(spec, child, cmdline))
    except OSError as exc:
        log.error("start.record_failed", backend=spec.backend, pid=child.pid, error=str(exc))
        await stop_engine(lease, spec.gpu_uuid, child, ctx.stop, ctx.memory_released)
        why = f"cannot record the engine in {ctx.records.path}: {exc.strerror or exc}"
        raise StartFailed(
            spec.backend, f"{spec.backend}: {why}", oom=None, last_error=why, returncode=None,
            pid=child.pid if announced else None,
        ) from None


def _current_cmdline(child: process.ChildProcess) -> list[str] | None:
    try:
        return list(psutil.Process(child.pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


async def _start_failure(
    lease: GpuLease,
    ctx: StartContext,
    child: process.ChildProcess,
    spec: LaunchSpec,
    exc: Exception,
) -> StartFailed:
    """Clean up after a failed start (group stopped, memory back, record dropped); say why."""
    timed_out = isinstance(exc, TimeoutError)
    await stop_engine(lease, spec.gpu_uuid, child, ctx.stop, ctx.memory_released)
    await asyncio.to_thread(ctx.records.remove, spec.backend)
    lines = await asyncio.to_thread(
        tail_lines, log_path(ctx.log_dir, spec.backend), 30, since_offset=child.log_offset
    )
    oom = ctx.find_oom(lines)
    err = str(exc) if timed_out else ctx.last_error(lines)
    if timed_out:
        message = f"{spec.backend}: {exc}"
    else:
        message = f"{spec.backend}: exited with status {child.returncode} during start: {err}"
    log.warning("start.failed", backend=spec.backend, oom=oom is not None, error=err,
                timed_out=timed_out)
    return StartFailed(
        spec.backend, message, oom=oom, last_error=err, returncode=child.returncode, pid=child.pid
    )
