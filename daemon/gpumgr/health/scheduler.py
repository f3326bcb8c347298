"""Scheduled probes: one APScheduler job per backend, feeding the state machine.

This object is the one owner of every backend's ``BackendHealth``: probe results and supervisor
events both go through it, so a transition is computed once, logged once (``backend.state``) and
handed once to ``on_transition``. Jobs run in the daemon's own event loop (``AsyncIOScheduler``),
with ``max_instances=1`` and ``coalesce=True`` so a hung server never piles up probes, and a
random phase plus jitter so that backends are not probed in lock-step. A ``starting`` backend is
polled every ``starting_poll_s`` (0.25 s) so that it is published ``up`` as soon as it answers.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx2
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

from gpumgr.backend_state import BackendState
from gpumgr.config.registry import HealthChecks, Provider, ProviderStatus
from gpumgr.config.settings import HealthSettings
from gpumgr.engines.probe_result import ProbeOutcome, ProbeResult
from gpumgr.engines.probes import ProbeOptions, is_cloud, is_probed, probe_provider
from gpumgr.health import machine
from gpumgr.health.machine import BackendHealth, Transition, Verdict
from gpumgr.logs import redact_text

log = structlog.get_logger(__name__)

DEFAULT_INTERVAL_S = 2.0
DEFAULT_TIMEOUT_S = 1.0
DEFAULT_RETRY_ATTEMPTS = 3

TransitionCallback = Callable[[Transition], object]
ChangeCallback = Callable[[BackendHealth], object]
"""Any change of what the status shows of a backend (state, reason, pid, restarts)."""
ProbeCallback = Callable[[str, ProbeResult, BackendHealth], object]


@dataclass(frozen=True)
class ProbeTiming:
    interval_s: float
    timeout_s: float
    retry_attempts: int
    jitter_s: float


def timing_for(provider: Provider, settings: HealthSettings, checks: HealthChecks) -> ProbeTiming:
    """gpumgr.yaml ``health:`` wins over the registry's ``health_checks:``, then the defaults
    (2 s / 1 s / 3). The engines gpumgr runs are on loopback and cheap to ask: unless
    ``health.interval_s``/``timeout_s`` say otherwise they are probed every
    ``engine_interval_s`` (0.5 s) with ``engine_timeout_s`` (0.5 s), so a hang is ``suspect``
    within about a second. The cloud has its own interval so that probes do not burn the quota."""
    managed = provider.is_vllm and provider.runs_here
    interval = settings.interval_s or (
        settings.engine_interval_s if managed else checks.interval_seconds or DEFAULT_INTERVAL_S
    )
    if is_cloud(provider):
        interval = settings.cloud_interval_s
    timeout = settings.timeout_s or (
        settings.engine_timeout_s if managed else checks.timeout_seconds or DEFAULT_TIMEOUT_S
    )
    attempts = settings.retry_attempts or checks.retry_attempts or DEFAULT_RETRY_ATTEMPTS
    return ProbeTiming(interval, min(timeout, interval), attempts, min(settings.jitter_s, interval / 2))


def verdict_of(outcome: ProbeOutcome) -> Verdict:
    if outcome is ProbeOutcome.OK:
        return Verdict.SUCCESS
    if outcome is ProbeOutcome.RATE_LIMITED:
        return Verdict.RATE_LIMITED
    if outcome is ProbeOutcome.AUTH_FAILED:
        return Verdict.AUTH_FAILED
    if outcome is ProbeOutcome.ASLEEP:
        return Verdict.ASLEEP
    return Verdict.FAILURE


def initial_state(provider: Provider) -> tuple[BackendState, str]:
    """Disabled and template providers are listed as ``disabled`` and never probed; types gpumgr
    cannot probe are ``unknown``; the rest start ``unknown`` until a probe or the supervisor says."""
    if provider.status in (ProviderStatus.DISABLED, ProviderStatus.TEMPLATE):
        return BackendState.DISABLED, f"status: {provider.status.value}"
    if not is_probed(provider):
        return BackendState.UNKNOWN, f"not probed (type {provider.type.value})"
    return BackendState.UNKNOWN, "not probed yet"


class HealthScheduler:
    """Probes every probed backend on its interval and owns the backends' health states."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        settings: HealthSettings,
        checks: HealthChecks,
        client: httpx2.AsyncClient,
        *,
        on_transition: TransitionCallback,
        on_probe: ProbeCallback | None = None,
        on_change: ChangeCallback | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        initial_states: Mapping[str, BackendState] | None = None,
    ) -> None:
        self._providers = dict(providers)
        self._settings = settings
        self._client = client
        self._on_transition = on_transition
        self._on_probe = on_probe
        self._on_change = on_change
        self._checks = checks
        self._env = dict(os.environ if env is None else env)
        self._clock = clock
        self._timing = {n: timing_for(p, settings, checks) for n, p in providers.items()}
        self._health: dict[str, BackendHealth] = {}
        self._generation: dict[str, int] = {}
        self._rate_limit_streak: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self._pending: set[asyncio.Future[object]] = set()
        for name, p in providers.items():
            self._add(name, p, (initial_states or {}).get(name))

    def _add(self, name: str, provider: Provider, state: BackendState | None) -> None:
        first, reason = initial_state(provider)
        if state is not None and first is not BackendState.DISABLED:
            first, reason = state, "initial"
        self._health[name] = machine.initial(name, first, self._clock(), reason)
        self._generation[name] = 0

    def update_providers(
        self,
        providers: Mapping[str, Provider],
        settings: HealthSettings,
        checks: HealthChecks,
        initial_states: Mapping[str, BackendState] | None = None,
    ) -> None:
        """A reload: new probe settings and provider entries apply at once; a removed provider
        is forgotten, an added one starts in its initial state. Nothing else moves."""
        self._settings, self._checks = settings, checks
        for name in list(self._providers):
            if name not in providers:
                del self._providers[name], self._health[name], self._timing[name]
                self._generation.pop(name, None)
                if self._scheduler is not None and self._scheduler.get_job(name) is not None:
                    self._scheduler.remove_job(name)
        for name, p in providers.items():
            added = name not in self._providers
            self._providers[name] = p
            self._timing[name] = timing_for(p, settings, checks)
            if added:
                self._add(name, p, (initial_states or {}).get(name))
            else:
                seed, reason = initial_state(p)
                given = (initial_states or {}).get(name)
                if given is not None and seed is not BackendState.DISABLED:
                    seed = given
                self._commit(name, machine.on_registry(
                    self._health[name], seed, reason or "enabled in providers.yaml",
                    self._clock(), managed=p.is_vllm))
            if self._scheduler is None:
                continue
            job = self._scheduler.get_job(name)
            if job is None and is_probed(p):
                self._add_job(name, datetime.now(timezone.utc))
            elif job is not None and not is_probed(p):
                self._scheduler.remove_job(name)
            elif job is not None:
                self._reschedule(name)

    # -- reading ---------------------------------------------------------------------------
    def health(self, name: str) -> BackendHealth:
        return self._health[name]

    def healths(self) -> dict[str, BackendHealth]:
        return dict(self._health)

    def providers(self) -> dict[str, Provider]:
        return dict(self._providers)

    def timing(self, name: str) -> ProbeTiming:
        return self._timing[name]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Add one job per probed backend and start, in the running event loop."""
        loop = asyncio.get_running_loop()
        self._scheduler = AsyncIOScheduler(event_loop=loop, timezone=timezone.utc)
        now = datetime.now(timezone.utc)
        for name, p in self._providers.items():
            if is_probed(p):
                self._add_job(name, now)
        self._scheduler.start()
        for name, h in self._health.items():
            if h.state is BackendState.STARTING:
                self._reschedule(name)

    def _add_job(self, name: str, now: datetime) -> None:
        assert self._scheduler is not None
        phase_s = random.uniform(0, min(self._timing[name].interval_s, 1.0))
        self._scheduler.add_job(
            self._job,
            self._trigger(name, now + timedelta(seconds=phase_s)),
            args=[name],
            id=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )

    async def stop(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def _interval(self, name: str) -> float:
        if self._health[name].state is BackendState.STARTING:
            return min(self._settings.starting_poll_s, self._timing[name].interval_s)
        return self._timing[name].interval_s

    def _trigger(self, name: str, start: datetime | None = None) -> IntervalTrigger:
        interval = self._interval(name)
        jitter = min(self._timing[name].jitter_s, interval / 2) or None
        return IntervalTrigger(
            seconds=interval,
            jitter=jitter,
            start_date=start or datetime.now(timezone.utc) + timedelta(seconds=interval),
            timezone=timezone.utc,
        )

    def _reschedule(self, name: str) -> None:
        if self._scheduler is None or self._scheduler.get_job(name) is None:
            return
        if self._health[name].state is BackendState.STARTING:
            start = datetime.now(timezone.utc)  # look right away, then every starting_poll_s
        else:
            start = None
        self._scheduler.reschedule_job(name, trigger=self._trigger(name, start))

    # -- events from the supervisor / actions -------------------------------------------------
    def lifecycle(
        self,
        name: str,
        target: BackendState,
        reason: str,
        pid: int | None | machine._Keep = machine.KEEP,
    ) -> Transition | None:
        """Put ``name`` in ``target`` now (raises ``machine.IllegalTransition`` if impossible);
        ``pid``: the process the event reports, ``None`` when none runs any more."""
        step = machine.on_lifecycle(self._health[name], target, reason, self._clock(), pid)
        self._generation[name] += 1
        return self._commit(name, step)

    def process_exited(self, name: str, restarting: bool, reason: str) -> Transition | None:
        """The supervisor saw the process exit: ``down``/``restarting``/``stopped`` at once."""
        step = machine.on_process_exit(self._health[name], restarting, reason, self._clock())
        self._generation[name] += 1
        return self._commit(name, step)

    def kv_measured(self, name: str, shortfall: str) -> Transition | None:
        """A started engine's KV cache reading (``machine.on_kv_reading``)."""
        step = machine.on_kv_reading(self._health[name], shortfall, self._clock())
        return self._commit(name, step)

    # -- probing ---------------------------------------------------------------------------------
    async def probe_now(self, name: str) -> ProbeResult | None:
        """Probe once outside the schedule (after a swap, for ``gpumgr status --refresh``)."""
        return await self._job(name, ignore_backoff=True)

    def request_probe(self, name: str) -> None:
        """Probe ``name`` soon, from synchronous code (a supervisor event sink)."""
        fut: asyncio.Future[object] = asyncio.ensure_future(self.probe_now(name))
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)

    async def _job(self, name: str, ignore_backoff: bool = False) -> ProbeResult | None:
        h = self._health.get(name)
        if h is None or h.state in machine.NOT_PROBED:  # removed by a reload, or not probed
            return None
        loop = asyncio.get_running_loop()
        if not ignore_backoff and loop.time() < self._not_before.get(name, 0.0):
            return None
        generation = self._generation[name]
        t = self._timing[name]
        options = ProbeOptions(
            timeout_s=t.timeout_s,
            busy_waiting_threshold=self._settings.busy_waiting_threshold,
            rate_limit_streak=self._rate_limit_streak.get(name, 0),
            cloud_interval_s=self._settings.cloud_interval_s,
            backoff_cap_s=self._settings.cloud_backoff_cap_s,
        )
        try:
            result = await probe_provider(self._client, self._providers[name], options, self._env)
        except Exception as exc:  # a bug in a probe must not kill the job: report it as a failure
            log.warning("probe.error", backend=name, error=type(exc).__name__)
            result = ProbeResult(ProbeOutcome.UNHEALTHY, 0.0, f"probe error: {type(exc).__name__}")
        if result.outcome is ProbeOutcome.RATE_LIMITED:
            self._rate_limit_streak[name] = self._rate_limit_streak.get(name, 0) + 1
            if result.retry_after_s:
                self._not_before[name] = loop.time() + result.retry_after_s
        else:
            self._rate_limit_streak[name] = 0
            self._not_before.pop(name, None)
        if generation != self._generation.get(name):
            return result  # the supervisor moved the backend while this probe was in flight
        provider = self._providers[name]
        step = machine.on_probe(
            self._health[name], verdict_of(result.outcome), result.detail, self._clock(),
            t.retry_attempts, requires_process=provider.is_vllm and provider.runs_here,
        )
        self._commit(name, step)
        if self._on_probe is not None:
            self._call(self._on_probe, name, result, self._health[name])
        return result

    def _commit(self, name: str, step: machine.Step) -> Transition | None:
        old = self._health[name]
        self._health[name] = step.health
        if self._on_change is not None and _shown(old) != _shown(step.health):
            self._call(self._on_change, step.health)
        tr = step.transition
        if tr is None:
            return None
        log.info("backend.state", backend=tr.backend, old=tr.old.value, new=tr.new.value, reason=tr.reason)
        if BackendState.STARTING in (tr.old, tr.new):
            self._reschedule(name)
        self._call(self._on_transition, tr)
        return tr

    def _call(self, callback: Callable[..., object], *args: object) -> None:
        """Callbacks may be plain functions or coroutines; a failing one is logged, not raised."""
        try:
            out = callback(*args)
        except Exception as exc:
            log.error("health.callback_failed", error=type(exc).__name__, detail=redact_text(str(exc))[:200])
            return
        if inspect.isawaitable(out):
            fut = asyncio.ensure_future(out)
            self._pending.add(fut)
            fut.add_done_callback(self._pending.discard)


def _shown(h: BackendHealth) -> tuple[object, ...]:
    """What the status shows of a backend's health (the failure streak is internal)."""
    return (h.state, h.reason, h.pid, h.restarts, h.since, h.consecutive_failures > 0)
