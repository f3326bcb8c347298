"""Status wiring: from what happened (supervisor events, probes, GPU reads) to what is published.

The ``HealthScheduler`` owns every backend's health state (the pure state machine decides it from
probe verdicts and supervisor events); the ``StatusPublisher`` owns the document (HTTP, SSE,
``status.json``, ``/metrics``). This object connects them and serves the read-only status API. It
decides nothing about processes: hung engines are the backend manager's business.

Changes that happen in the same tick of the event loop (an engine's exit, the restart the policy
schedules, its pid going away) are published as one update, so a router never sees a half-done
change such as ``up`` with no pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

import httpx2
import structlog
from fastapi import FastAPI

from gpumgr.api.server import ApiServer, parse_listen
from gpumgr.api.status_app import create_status_app
from gpumgr.backend_state import BackendState
from gpumgr.config import Config
from gpumgr.engines.probe_result import LoadedModel, ProbeResult
from gpumgr.gpu import GpuInventory
from gpumgr.engines.probes import is_probed
from gpumgr.health.machine import NOT_PROBED, BackendHealth, Transition
from gpumgr.health.scheduler import HealthScheduler
from gpumgr.health.supervisor_events import apply_supervisor_event
from gpumgr.logs import register_secret
from gpumgr.redaction import provider_secrets, redactor_for
from gpumgr.sd_notify import Notifier
from gpumgr.status.document import BackendStatus, DaemonInfo, GpuStatus
from gpumgr.status.lifecycle import LifecycleTracker
from gpumgr.status.metrics import LifecycleMetrics, LifecycleView, LoadedModelView, classify_operation
from gpumgr.status.targets import TargetGroup, desired_up, prometheus_targets
from gpumgr.status.publisher import BackendChanges, StatusPublisher
from gpumgr.status.seed import initial_backend, initial_backends
from gpumgr.config.registry import ProviderStatus, ProviderType
from gpumgr.gpu.contexts import CACHE_FILE as CONTEXTS_FILE, MeasuredContexts
from gpumgr.supervisor.events import ChildStarted, KvCacheMeasured, OllamaEvicted, SupervisorEvent
from gpumgr.weights import Snapshot

log = structlog.get_logger(__name__)


def ollama_spill(loaded: Iterable[LoadedModel]) -> str:
    """Why an Ollama backend is ``degraded``: each loaded model with part of it on the CPU
    (``size_vram < size`` in ``/api/ps``) and that share; empty when all sit in VRAM."""
    parts = []
    for m in loaded:
        if m.spilled and m.size_bytes > 0:
            on_cpu = m.size_bytes - m.size_vram_bytes
            parts.append(f"{m.name} {100.0 * on_cpu / m.size_bytes:.0f} % on CPU "
                         f"({on_cpu / 2**30:.1f} of {m.size_bytes / 2**30:.1f} GiB)")
    return f"spilling to CPU: {', '.join(parts)}" if parts else ""


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _load_progress(h: BackendHealth, expected_s: float | None) -> BackendChanges:
    """While an engine loads: "loading 12 s of ~41 s" and the fields ``progress``/``eta_s``
    (from its last measured start); cleared in every other state."""
    if h.state is not BackendState.STARTING:
        return {"progress": None, "eta_s": None}
    elapsed = max(0.0, time.time() - h.since)
    if not expected_s:
        return {"detail": f"loading {elapsed:.0f} s ({h.reason})", "progress": None, "eta_s": None}
    return {
        "detail": f"loading {elapsed:.0f} s of ~{expected_s:.0f} s",
        "progress": round(min(0.99, elapsed / expected_s), 2),
        "eta_s": math.floor(max(0.0, expected_s - elapsed) * 10) / 10,  # never past expected
    }


class StatusWiring:
    def __init__(
        self,
        config: Config,
        *,
        notifier: Notifier | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.contexts = MeasuredContexts(config.paths.state_dir / CONTEXTS_FILE)
        self._env = os.environ if env is None else env
        self._notifier = notifier or Notifier(self._env)
        secrets = provider_secrets(config.providers.values(), self._env)
        for s in secrets:
            register_secret(s)
        self.publisher = StatusPublisher(
            daemon=DaemonInfo(pid=os.getpid(), started_at=datetime.now(UTC), simulated=config.simulate),
            status_path=config.paths.status_file,
            redact=redactor_for(secrets),
        )
        seeded = initial_backends(config.providers.values())
        self.publisher.set_backends(seeded)
        self._client = httpx2.AsyncClient()
        self.scheduler = HealthScheduler(
            config.providers,
            config.settings.health,
            config.providers_file.health_checks,
            self._client,
            on_transition=self._on_transition,
            on_probe=self._on_probe,
            on_change=self._on_change,
            env=self._env,
            initial_states={b.name: b.state for b in seeded},  # one rule for the first states
        )
        self._api: ApiServer | None = None
        self._dirty: dict[str, BackendChanges] = {}
        self._flush_scheduled = False
        self._probed: set[str] = set()
        self._probe_unavailable: dict[str, dict[str, str]] = {}
        """Backend → the models its last probe said cannot be served (e.g. not pulled)."""
        self._evicted: dict[str, tuple[str, str]] = {}
        """Ollama model → (the engine it was unloaded for, why), until that start is over."""
        self._progress_task: asyncio.Task[None] | None = None
        self.expected_startup_s: Callable[[str], float | None] = lambda _name: None
        """The expected seconds from spawn to serving of a backend (its last measured start)."""
        self.expected_wake_s: Callable[[str], float | None] = lambda _name: None
        """The same for a wake of its sleeping engine (its last measured wake)."""
        self.on_state_change: list[Callable[[Transition], object]] = []
        """Called on every state transition (the daemon refreshes the GPU figures)."""
        self.desired_engines: Callable[[], tuple[frozenset[str], frozenset[str]]] = (
            self._registry_desired)
        """The managed engines gpumgr means to run (asleep ones included) and, of them, those
        kept asleep: the daemon points this at the manager's desired state; until then (and
        without a manager) the registry's ``active`` vLLM providers."""
        self._ollama_loaded: dict[str, tuple[LoadedModelView, ...]] = {}
        self.lifecycle_metrics = LifecycleMetrics(
            self.publisher.metrics, lambda: self.publisher.document, self._lifecycle_view)
        self.lifecycle = LifecycleTracker(self.lifecycle_metrics)
        for name, h in self.scheduler.healths().items():
            self.lifecycle.seed(name, h.state, h.since)

    # -- lifecycle -------------------------------------------------------------------------
    def app(self) -> FastAPI:
        """A status app over this publisher (the TCP listener's, or the socket's to extend)."""
        host, _ = parse_listen(self.config.listen)
        return create_status_app(self.publisher, listen_host=host, targets=self.prometheus_targets)

    async def start_api(self, extend: Callable[[FastAPI], None] | None = None) -> None:
        """Bind the status listener (``listen``): read-only, unless ``extend`` adds control
        routes to it (only when a control token is configured)."""
        host, port = parse_listen(self.config.listen)
        app = self.app()
        if extend is not None:
            extend(app)
        self._api = ApiServer.tcp(app, host, port)
        await self._api.start()

    def start_probes(self) -> None:
        self.scheduler.start()
        self._progress_task = asyncio.get_running_loop().create_task(
            self._progress_loop(), name="load-progress")

    def adoption_done(self) -> None:
        """The manager adopted (or gave up on) every engine an earlier daemon left."""
        self.publisher.mark_adoption_done()

    @property
    def listen_address(self) -> str:
        assert self._api is not None
        return self._api.address

    @property
    def port(self) -> int | None:
        return self._api.port if self._api else None

    async def stop(self) -> None:
        if self._progress_task is not None:
            self._progress_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._progress_task
        await self.scheduler.stop()
        self._flush()
        self.publisher.close()
        if self._api is not None:
            await self._api.stop()
        await self._client.aclose()

    def healths(self) -> dict[str, BackendHealth]:
        return self.scheduler.healths()

    # -- inputs ----------------------------------------------------------------------------
    def supervisor_sink(self, event: SupervisorEvent) -> None:
        """Supervisor events move the state machine at once; a start also brings its port and
        slice, published in the same update as the new state and pid."""
        if isinstance(event, OllamaEvicted):
            why = f"unloaded to make room for {event.backend}; back once that start is over"
            self._evicted.update({m: (event.backend, why) for m in event.models})
            self._publish_unavailable()
        if isinstance(event, KvCacheMeasured):
            extra = self._dirty.setdefault(event.backend, {})
            extra["kv_cache_tokens_planned"] = event.planned_kv
            extra["kv_cache_tokens_actual"] = event.actual_kv
            extra["vllm_version"] = event.vllm_version
            self._schedule_flush()
        if isinstance(event, ChildStarted):
            extra = self._dirty.setdefault(event.backend, {})
            extra["port"] = event.port
            if event.fraction is not None:  # an adopted child's slice may be unknown
                extra["gpu_memory_utilization"] = event.fraction
            self._schedule_flush()
        self.lifecycle.before_event(event)
        try:
            apply_supervisor_event(self.scheduler, event)
        finally:
            self.lifecycle.after_event(event)

    def weights_ready(self, backend: str, snapshot: Snapshot) -> None:
        self.publisher.update_backend(backend, weights_commit=snapshot.commit)

    def gpus_read(self, inventory: GpuInventory) -> None:
        if inventory.available:
            self.publisher.set_gpus([GpuStatus.model_validate(g.to_dict()) for g in inventory.gpus])
            self._note_contexts(inventory)
        else:
            self.publisher.set_gpus([], error=f"GPU unavailable: {inventory.error or 'unknown'}")

    def _note_contexts(self, inventory: GpuInventory) -> None:
        """Each card's CUDA context as its serving engines show it (NVML's figure for the
        process less its budget), for the next plan on that card (``gpumgr.gpu.contexts``).
        Only engines known to hold their whole planned KV cache count."""
        for g in inventory.gpus:
            engines = []
            for proc in g.processes:
                b = self.publisher.backend(proc.owner)
                if (b is None or not b.managed or b.state is not BackendState.UP
                        or proc.used_bytes is None or b.gpu_memory_utilization is None
                        or b.kv_cache_tokens_actual is None or not b.kv_cache_tokens_planned
                        or b.kv_cache_tokens_actual < 0.98 * b.kv_cache_tokens_planned):
                    continue
                engines.append((proc.used_bytes, b.gpu_memory_utilization))
            if engines:
                self.contexts.record(g, engines)

    def reload(self, config: Config) -> None:
        """A valid new configuration, before the manager applies it: added backends appear,
        descriptive fields are refreshed, probe settings apply; the states of the backends
        that stay are kept. Removed backends stay listed until ``prune`` (their engines are
        still being stopped, and that is published)."""
        self.config = config
        self._set_backends(config, keep_removed=True)

    def prune(self) -> None:
        """After the manager applied a reload: backends no longer configured disappear."""
        self._set_backends(self.config, keep_removed=False)

    def _set_backends(self, config: Config, *, keep_removed: bool) -> None:
        current = {b.name: b for b in self.publisher.document.backends}
        backends: list[BackendStatus] = []
        for p in config.providers.values():
            seed = initial_backend(p)
            old = current.get(p.name)
            if old is not None and old.state is not BackendState.DISABLED and p.runs_here:
                seed = old.model_copy(update={
                    "type": seed.type, "base_url": seed.base_url, "models": seed.models,
                    "managed": seed.managed,
                })
            backends.append(seed)
        providers = dict(config.providers)
        if keep_removed:
            old_providers = self.scheduler.providers()
            for name, b in current.items():
                if name not in providers and name in old_providers:
                    backends.append(b)
                    providers[name] = old_providers[name]
        self.publisher.set_backends(backends)
        self.scheduler.update_providers(
            providers, config.settings.health, config.providers_file.health_checks,
            initial_states={b.name: b.state for b in backends},
        )
        for name, h in self.scheduler.healths().items():
            self.lifecycle.seed(name, h.state, h.since)
        for name in set(current) - set(providers):
            self.lifecycle.forget(name)
            self._ollama_loaded.pop(name, None)

    # -- publication -----------------------------------------------------------------------
    def _on_change(self, health: BackendHealth) -> None:
        self._dirty.setdefault(health.name, {})
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven without a loop (unit tests): publish now
            self._flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Publish every backend that changed this tick: state, reason, pid and restarts from
        the state machine, plus what the events brought, in one update each."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, {}
        healths = self.scheduler.healths()
        for name, extra in dirty.items():
            h = healths.get(name)
            if h is None or self.publisher.backend(name) is None:
                continue
            changes: BackendChanges = {
                "state": h.state, "detail": h.reason, "since": _utc(h.since),
                "pid": h.pid, "restarts": h.restarts,
                "suspect": h.state is BackendState.UP and h.consecutive_failures > 0,
                **_load_progress(h, self._expected_s(name, h.reason)), **extra,
            }
            self.publisher.update_backend(name, **changes)

    def _expected_s(self, name: str, reason: str) -> float | None:
        """How long ``name``'s ``starting`` should last: its last wake when it is being woken
        (the reason ``pid N woken``, health/supervisor_events.py), else its last cold start."""
        if reason.endswith(" woken"):
            return self.expected_wake_s(name)
        return self.expected_startup_s(name)

    def _publish_unavailable(self) -> None:
        """Each backend's unavailable models: what its probe found, plus the Ollama models
        unloaded for an engine that is still starting (a request would load them again)."""
        for b in self.publisher.document.backends:
            merged = dict(self._probe_unavailable.get(b.name, {}))
            merged.update({m: why for m, (_, why) in self._evicted.items() if m in b.models})
            if merged != b.unavailable_models:
                self.publisher.update_backend(b.name, unavailable_models=merged)

    def _on_transition(self, t: Transition) -> None:
        if t.new is not BackendState.STARTING and any(
            owner == t.backend for owner, _ in self._evicted.values()
        ):
            self._evicted = {m: v for m, v in self._evicted.items() if v[0] != t.backend}
            self._publish_unavailable()
        self.lifecycle.transition(
            t, self._expected_s(t.backend, t.reason) if t.new is BackendState.STARTING else None)
        for hook in self.on_state_change:
            hook(t)
        healths = self.scheduler.healths().values()
        up = sum(1 for h in healths if h.state is BackendState.UP)
        total = sum(1 for h in healths if h.state is not BackendState.DISABLED)
        self._notifier.status(f"{up}/{total} backends up; {t.backend} {t.new.value}")

    def _on_probe(self, name: str, result: ProbeResult, health: BackendHealth) -> None:
        if result.ok:
            self.lifecycle.probe_ok(name, time.time())
        provider = self.scheduler.providers().get(name)
        if provider is not None and provider.type is ProviderType.OLLAMA and result.ok:
            self._ollama_loaded[name] = tuple(
                LoadedModelView(m.name, m.size_bytes, m.size_vram_bytes) for m in result.loaded)
            # Spilled to the CPU: serving, but slower than planned: ``degraded`` through the
            # state machine's shortfall (the same up <-> degraded path as a vLLM KV shortfall).
            self.scheduler.kv_measured(name, ollama_spill(result.loaded))
        unavailable = {m.name: m.reason or "unavailable" for m in result.models if not m.available}
        self._probe_unavailable[name] = unavailable
        models = self.publisher.backend(name)
        unavailable = {**unavailable, **{m: why for m, (_, why) in self._evicted.items()
                                         if models is not None and m in models.models}}
        changes: BackendChanges = {
            "last_check": datetime.now(UTC), "latency_ms": result.latency_ms,
            "busy": bool(result.busy), "unavailable_models": unavailable,
            "suspect": health.state is BackendState.UP and health.consecutive_failures > 0,
        }
        if health.state is not BackendState.STARTING:  # while loading, say "loading", not "refused"
            changes["detail"] = health.reason
        self.publisher.update_backend(name, **changes)
        self._probed.add(name)
        self._check_first_round()

    def _check_first_round(self) -> None:
        """Every backend that is probed now has had one verdict: say so in the document."""
        waiting = [n for n, h in self.scheduler.healths().items()
                   if h.state not in NOT_PROBED and is_probed(self.scheduler.providers()[n])
                   and n not in self._probed]
        if not waiting:
            self.publisher.mark_first_probe_round_done()

    async def _progress_loop(self) -> None:
        """Once a second, every loading backend's elapsed time and expected end."""
        while True:
            await asyncio.sleep(1.0)
            for name, h in self.scheduler.healths().items():
                if h.state is BackendState.STARTING:
                    self._dirty.setdefault(name, {})
            if self._dirty:
                self._schedule_flush()

    # -- monitoring (issue 20; docs/monitoring.md) ---------------------------------------------
    def _registry_desired(self) -> tuple[frozenset[str], frozenset[str]]:
        return frozenset(p.name for p in self.config.providers.values()
                         if p.is_vllm and p.status is ProviderStatus.ACTIVE), frozenset()

    def desired_up(self) -> dict[str, bool]:
        """Backend → whether gpumgr means it to serve now (``gpumgr_backend_desired_up``):
        read from ``desired_engines``, i.e. the manager's desired state."""
        running, asleep = self.desired_engines()
        return desired_up(self.scheduler.providers(), running, asleep)

    def prometheus_targets(self) -> list[TargetGroup]:
        """What ``GET /v1/prometheus/targets`` serves (``gpumgr.status.targets``)."""
        running, asleep = self.desired_engines()
        return prometheus_targets(self.publisher.document, self.scheduler.providers(), running, asleep)

    def _lifecycle_view(self) -> LifecycleView:
        providers = self.scheduler.providers()
        return LifecycleView(
            desired_up=self.desired_up(),
            gpu_of={n: p.gpu for n, p in providers.items() if p.runs_here and (
                p.is_vllm or p.type is ProviderType.OLLAMA)},
            state_seconds=self.lifecycle.state_seconds(),
            ollama_loaded=dict(self._ollama_loaded),
        )

    def observe_operation(
        self, what: str, ok: bool, seconds: float, timings_s: Mapping[str, float] | None,
        text: str,
    ) -> None:
        """A control operation ended (the control API calls this once per operation):
        ``what`` is its claim (``"swap a → b"``), ``text`` its message or error."""
        self.lifecycle_metrics.observe_operation(
            classify_operation(what, ok, seconds, timings_s, text))

    def reloaded(self, restarted: list[str]) -> None:
        """A reload restarted these engines (counted as restarts with reason ``reload``)."""
        self.lifecycle.reloaded(restarted)
