"""The backend manager: the one place that decides what runs.

It owns the keepers (one per managed backend that should run), the per-GPU leases, the launch
planner, the restart policy, the local snapshots and the persisted desired state. Everything that
changes what runs goes through it: the first reconcile at boot (adoption by desired state),
``reconcile`` on a reload, ``start``/``stop`` (and later swap, sleep, wake), restarting an engine
that hangs, and the shutdown. It reports through the supervisor's events and never keeps a
backend's state itself: the state machine decides that from the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from gpumgr.aio import run_in_daemon_thread, spawn_task
from gpumgr.backend_state import BackendState
from gpumgr.config import Config
from gpumgr.config.registry import Provider
from gpumgr.engines.vllm_log import find_oom, vllm_last_error
from gpumgr.engines.vllm_version import CACHE_FILE as VERSIONS_FILE, VllmVersions
from gpumgr.gpu.contexts import CACHE_FILE as CONTEXTS_FILE, MeasuredContexts
from gpumgr.errors import GpuUnavailable
from gpumgr.gpu import MIB, GpuBackend, GpuInventory
from gpumgr.health.machine import BackendHealth
from gpumgr.sim import SIM_ENGINE_COMMAND
from gpumgr.supervisor import process
from gpumgr.modelfiles import model_dims, weights_bytes
from gpumgr.plan import VramPlan
from gpumgr.secrets import read_secret
from gpumgr.supervisor.events import BackendFailed, Downloading, EventSink, OllamaEvicted
from gpumgr.supervisor.logs import log_path, tail_lines
from gpumgr.supervisor.records import ChildRecord, ChildRecords
from gpumgr.supervisor.restart import RestartPolicy
from gpumgr.supervisor.system import REAL, System
from gpumgr.weights import DownloadProgress, Snapshot, WeightsContext

from .adopt import Adoption, adopt_recorded
from .desired import DesiredState, DesiredStore, Identity, desired_for, launch_identity, managed_providers
from .keeper import BackendKeeper, FirstAttempt
from .lease import GpuLease, GpuLocks
from .ollama_room import OllamaRoom
from .prepare import LaunchPlanner, PlanFacts, PlanView, engine_health_url, without_owners
from .start import LaunchSpec, Prepare, PrepareHint, StartContext, StartTiming
from .startup_times import StartupTimes
from .stop import Drain, StopTiming, stop_engine

log = structlog.get_logger(__name__)

FACTS_WAIT_S = 10.0
"""How long a start waits for the hub's planning facts of another backend on its card."""
EVICTION_NOTICE_S = 0.3
"""How long the router is given to see that Ollama models are about to be unloaded (it follows
the status's events; a few milliseconds locally) before they are."""
UNRESPONSIVE_CHECK_S = 1.0
"""How often the manager looks for engines that are down while their process lives."""

HealthReader = Callable[[], Mapping[str, BackendHealth]]
WeightsHook = Callable[[str, Snapshot], None]


@dataclass
class ReconcileReport:
    """What one reconcile did, for the log and for tests."""

    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


class BackendManager:
    def __init__(
        self,
        config: Config,
        inventory: GpuBackend,
        sink: EventSink,
        *,
        health: HealthReader | None = None,
        on_weights: WeightsHook | None = None,
        system: System = REAL,
        command: list[str] | None = None,
    ) -> None:
        self.config = config
        self._inventory = inventory
        self._sink = sink
        self._health = health
        self._on_weights = on_weights
        self._system = system
        self._command = command if command is not None else (
            SIM_ENGINE_COMMAND if config.simulate else None
        )
        self.locks = GpuLocks()
        self.records = ChildRecords(config.paths.state_dir, system)
        self.store = DesiredStore(config.paths.state_dir, system)
        self.startup_times = StartupTimes(config.paths.state_dir, system)
        self.desired = DesiredState()
        self.keepers: dict[str, BackendKeeper] = {}
        self._identity: dict[str, Identity] = {}
        """Backend → the launch identity its keeper runs with."""
        self._snapshots: dict[str, Path] = {}
        self._facts: dict[str, PlanFacts] = {}
        """Planning facts of the models whose weights are still coming (from the hub)."""
        self._facts_known: dict[str, asyncio.Event] = {}
        """Set once a backend's planning facts are known (or cannot be): a start on the same
        card waits for them (metadata, seconds), never for another's download."""
        self._gpus: dict[int, str] = {}
        self._gpu_error: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._hang_restarts: set[str] = set()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._apply_settings(config)

    # -- configuration -----------------------------------------------------------------------
    def _apply_settings(self, config: Config) -> None:
        settings = config.settings
        vllm = settings.vllm
        self.policy = RestartPolicy.from_settings(settings.restart)
        self.ctx = StartContext(
            log_dir=config.paths.log_dir,
            records=self.records,
            locks=self.locks,
            sink=self._sink,
            find_oom=find_oom,
            last_error=vllm_last_error,
            timing=StartTiming(
                start_timeout_s=vllm.start_timeout_s, poll_s=settings.health.starting_poll_s
            ),
            log_max_bytes=vllm.log_max_bytes,
            log_backups=vllm.log_backups,
            stop=StopTiming(vllm.stop_timeout_s, vllm.memory_release_timeout_s),
            memory_released=self._memory_released,
            system=self._system,
            startup_times=self.startup_times,
        )
        self.planner = LaunchPlanner(
            settings=settings,
            inventory=self._inventory,
            command=self._command,
            withheld_env={p.env_var for p in config.providers.values() if p.env_var},
            ollama=OllamaRoom(list(config.providers.values())),
            announce_eviction=self._announce_eviction,
            versions=VllmVersions(config.paths.state_dir / VERSIONS_FILE),  # h19: vllm --version cache
            contexts=MeasuredContexts(config.paths.state_dir / CONTEXTS_FILE),  # h19
        )

    def _provider(self, name: str) -> Provider:
        return managed_providers(self.config)[name]

    # -- reading -----------------------------------------------------------------------------
    def managed_pids(self) -> dict[int, str]:
        """pid (== pgid) → backend of the engines running now."""
        return {k.child.pid: n for n, k in self.keepers.items() if k.child is not None}

    def running_fractions(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, keeper in self.keepers.items():
            fraction = keeper.running_fraction
            if fraction is not None:
                out[name] = fraction
        return out

    def plan_view(self) -> PlanView:
        """A frozen picture of what runs, for the planner's worker thread."""
        managed = managed_providers(self.config)
        return PlanView(
            providers=tuple(
                p for n, p in managed.items()
                if n in self.desired.running and (n in self._snapshots or n in self._facts)
                and not self._asleep(n)
            ),
            snapshots=dict(self._snapshots),
            facts={n: f for n, f in self._facts.items() if n not in self._snapshots},
            managed_pids=self.managed_pids(),
            running_fractions=self.running_fractions(),
        )

    def _announce_eviction(self, backend: str, models: tuple[str, ...]) -> None:
        """From the planner's worker thread: publish (on the loop) that ``models`` are being
        unloaded for ``backend`` and give the router a moment to see it, before they are."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        async def announce() -> None:
            self._sink(OllamaEvicted(backend, models))
            await asyncio.sleep(EVICTION_NOTICE_S)

        try:
            asyncio.run_coroutine_threadsafe(announce(), loop).result(timeout=5)
        except (TimeoutError, RuntimeError) as exc:
            log.warning("ollama.eviction_notice_failed", backend=backend, error=type(exc).__name__)

    def _asleep(self, name: str) -> bool:
        """A sleeping engine is not planned: what it still holds (its CUDA context) is simply
        taken, like any other process's memory."""
        keeper = self.keepers.get(name)
        return keeper is not None and keeper.asleep

    async def _memory_released(self, pids: frozenset[int]) -> bool:
        inv = await asyncio.to_thread(self._inventory.read)
        if not inv.available:
            return True  # nothing to wait for that we could see
        return not any(p.pid in pids for g in inv.gpus for p in g.processes)

    # -- boot ----------------------------------------------------------------------------------
    async def begin(self, first_read: GpuInventory) -> ReconcileReport:
        """The first reconcile: fold the registry into the stored desired state, adopt the
        engines an earlier daemon left (stopping the ones nobody wants), launch a keeper for
        every backend that should run. Returns at once: weights and starts go on in the keepers.

        Without a readable GPU (no driver, or a driver/library mismatch after an upgrade)
        nothing new can be planned or started, but serving engines are adopted and kept."""
        self._loop = asyncio.get_running_loop()
        self._read_gpus(first_read)
        self.desired = desired_for(self.config, await asyncio.to_thread(self.store.load))
        await self._save_desired()
        report = ReconcileReport()
        adoption = await adopt_recorded(
            self.records, set(self.desired.names), self.config.paths.log_dir
        )
        await self._stop_unwanted(adoption)
        for name, identity in self.desired.running.items():
            record = adoption.records.get(name)
            child = adoption.adopted.get(name)
            if (child is None or record is None) and name in self.desired.sleeping:
                log.info("adopt.sleeper_gone", backend=name)  # asleep means "not serving"
                self.desired = self.desired.without(name)
                await self._save_desired()
                continue
            if child is None or record is None:
                self._launch(name)
                report.started.append(name)
                continue
            recorded = record.extra.get("identity")
            if isinstance(recorded, dict) and recorded != identity:
                # the configuration changed while no daemon ran: this engine is not the one
                # asked for now
                log.info("adopt.changed", backend=name, pid=child.pid)
                await self._stop_adopted(child, record)
                self._launch(name)
                report.restarted.append(name)
                continue
            self._launch(name, child, record.fraction, record.gpu_uuid)
            report.adopted.append(name)
        self._start_background()
        log.info("manager.reconciled", **vars(report))
        return report

    def _read_gpus(self, inventory: GpuInventory) -> None:
        self._gpu_error = None if inventory.available else (inventory.error or "GPU unavailable")
        if self._gpu_error:
            log.error("gpu.unavailable", error=self._gpu_error)
        self._gpus = {g.index: g.uuid for g in inventory.gpus}

    async def _stop_unwanted(self, adoption: Adoption) -> None:
        for child, record in adoption.unwanted:
            log.info("adopt.unwanted", backend=child.backend, pid=child.pid)
            await self._stop_adopted(child, record)

    async def _stop_adopted(self, child: process.ChildProcess, record: ChildRecord) -> None:
        """Stop an adopted engine that is not (or no longer) the one asked for; provably ours."""
        gpu_uuid = record.gpu_uuid or "unknown"
        async with self.locks.lease(gpu_uuid, f"stop adopted {child.backend}") as lease:
            await stop_engine(lease, gpu_uuid, child, self.ctx.stop, self._memory_released)
        await asyncio.to_thread(self.records.remove, child.backend)

    def _launch(
        self,
        name: str,
        adopted: process.ChildProcess | None = None,
        fraction: float | None = None,
        gpu_uuid: str | None = None,
        first: FirstAttempt | None = None,
        planner: LaunchPlanner | None = None,
    ) -> None:
        provider = self._provider(name)
        identity = self.desired.running.get(name) or launch_identity(provider, self.config.settings.vllm)
        self._identity[name] = identity
        if adopted is None and name not in self._snapshots:  # its weights are looked up first
            self._facts_known.setdefault(name, asyncio.Event())
        uuid = gpu_uuid or self._gpus.get(provider.gpu)
        if adopted is None and self._gpu_error is not None:
            self._sink(BackendFailed(name, self._gpu_error))
            if first is not None:
                first.settle(GpuUnavailable(self._gpu_error))
            return
        if uuid is None:
            why = f"GPU {provider.gpu} not found ({len(self._gpus)} card(s))"
            self._sink(BackendFailed(name, why))
            if first is not None:
                first.settle(GpuUnavailable(why))
            return
        assert provider.port is not None  # the config loader requires a port for vLLM
        keeper = BackendKeeper(
            name,
            uuid,
            provider.port,
            self._preparer(provider, identity, planner),
            self.ctx,
            self.policy,
            weights=functools.partial(self._ensure_weights, provider),
            health_url=engine_health_url(provider),
            served_name=provider.served_names[0] if provider.served_names else None,
            api_key=read_secret(provider.env_var, os.environ) if provider.requires_api_key else None,
        )
        self.keepers[name] = keeper
        keeper.launch(adopted, fraction, first)

    def _preparer(
        self, provider: Provider, identity: Identity, planner: LaunchPlanner | None = None
    ) -> Prepare:
        plan = (planner or self.planner).preparer(provider, self.plan_view)

        async def prepare(hint: PrepareHint) -> LaunchSpec:
            await self._await_facts(provider)
            spec = await plan(hint)
            return replace(spec, identity=identity)

        return prepare

    async def _await_facts(self, provider: Provider) -> None:
        """Before planning ``provider``: the planning facts of every other backend that should
        run on the same card (bounded by ``FACTS_WAIT_S``; the hub's metadata, not a download)."""
        waits = [
            ev.wait() for n, ev in self._facts_known.items()
            if n != provider.name and n in self.desired.running and not ev.is_set()
            and self.has_live_keeper(n)
            and self._provider_or_none(n) is not None and self._provider(n).gpu == provider.gpu
        ]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), FACTS_WAIT_S)

    def _provider_or_none(self, name: str) -> Provider | None:
        return managed_providers(self.config).get(name)

    # -- weights -------------------------------------------------------------------------------
    async def _ensure_weights(self, provider: Provider) -> None:
        """The backend's snapshot, local or fetched now (in a daemon thread; progress becomes
        ``downloading`` events). Each backend fetches its own: nobody waits for another's."""
        loop = asyncio.get_running_loop()
        name = provider.name

        def say(detail: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while a download ran on
                loop.call_soon_threadsafe(self._sink, Downloading(name, detail))

        def progress(ev: DownloadProgress) -> None:
            say(ev.detail())

        known = self._facts_known.setdefault(name, asyncio.Event())

        def facts(found: PlanFacts | None) -> None:
            def store() -> None:
                if found is not None:
                    self._facts[name] = found
                known.set()

            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(store)

        try:
            snap = await run_in_daemon_thread(self._resolve_weights, provider, say, progress, facts)
        finally:
            known.set()  # known or not knowable: nobody waits any longer
        self._snapshots[name] = snap.path
        if self._on_weights is not None:
            self._on_weights(name, snap)
        log.info("weights.ready", backend=name, repo=snap.repo, commit=snap.commit)

    def _resolve_weights(
        self,
        provider: Provider,
        say: Callable[[str], None],
        progress: Callable[[DownloadProgress], None],
        facts: Callable[[PlanFacts | None], None],
    ) -> Snapshot:
        from gpumgr.sim.hub import hub_endpoint
        from gpumgr.weights import WeightsContext

        local = WeightsContext.from_config(self.config).local(provider)  # no hub needed
        if local is not None:
            facts(None)
            return local
        with contextlib.ExitStack() as stack:
            endpoint = (
                stack.enter_context(hub_endpoint(self.config.settings.simulate.hub_endpoint))
                if self.config.simulate
                else None
            )
            weights = WeightsContext.from_config(self.config, endpoint=endpoint)
            say(f"fetching {provider.hf_repo}")
            facts(_plan_facts(weights, provider))
            return weights.resolve(provider, progress=progress)

    # -- actions -------------------------------------------------------------------------------
    async def start(self, name: str) -> None:
        """Make ``name`` one of the backends that should run, and launch it (desired state first:
        a daemon that dies now starts it again)."""
        provider = self._provider(name)
        self.desired = self.desired.with_running(
            name, launch_identity(provider, self.config.settings.vllm)
        )
        await self._save_desired()
        if name not in self.keepers:
            self._launch(name)

    async def stop(self, name: str) -> None:
        """``name`` should not run: desired state first, then the engine stops (under its GPU's
        lease) and the backend ends ``stopped`` whatever it was doing."""
        self.desired = self.desired.without(name)
        await self._save_desired()
        await self._stop_keeper(name)

    async def _stop_keeper(self, name: str) -> None:
        keeper = self.keepers.get(name)
        if keeper is None:
            return
        await keeper.halt()  # a start in flight lets go of the lease
        async with self.locks.lease(keeper.gpu_uuid, f"stop {name}") as lease:
            await keeper.stop(lease)
        del self.keepers[name]
        self._identity.pop(name, None)

    async def _restart(self, name: str) -> None:
        await self._stop_keeper(name)
        self._launch(name)

    async def reconcile(self, config: Config) -> ReconcileReport:
        """Apply a new configuration: start added backends, stop removed ones, restart exactly
        those whose launch identity changed, leave the rest untouched (same pid)."""
        self.config = config
        self._apply_settings(config)
        if self._gpu_error is not None:
            self._read_gpus(await asyncio.to_thread(self._inventory.read))
        self.desired = desired_for(config, self.desired)
        await self._save_desired()
        report = ReconcileReport()
        for name in list(self.keepers):
            wanted = self.desired.running.get(name)
            if wanted is None:
                await self._stop_keeper(name)
                report.stopped.append(name)
            elif wanted != self._identity.get(name):
                await self._restart(name)
                report.restarted.append(name)
            else:
                self.keepers[name].reconfigure(
                    self._preparer(self._provider(name), wanted), self.ctx, self.policy
                )
                report.unchanged.append(name)
        for name in self.desired.running:
            if name not in self.keepers:
                self._launch(name)
                report.started.append(name)
        log.info("manager.reconciled", **vars(report))
        return report

    async def _save_desired(self) -> None:
        try:
            await asyncio.to_thread(self.store.save, self.desired)
        except OSError as exc:  # what should run is still known here; the next boot asks the file
            log.error("desired.write_failed", path=str(self.store.path), error=str(exc))

    # -- primitives for operators (``actions.operator``) ------------------------------------
    def provider(self, name: str) -> Provider:
        return self._provider(name)

    def gpu_uuid_of(self, name: str) -> str:
        """The card ``name`` runs (or would run) on."""
        keeper = self.keepers.get(name)
        if keeper is not None:
            return keeper.gpu_uuid
        provider = self._provider(name)
        if self._gpu_error is not None:
            raise GpuUnavailable(self._gpu_error)
        uuid = self._gpus.get(provider.gpu)
        if uuid is None:
            raise GpuUnavailable(f"GPU {provider.gpu} not found ({len(self._gpus)} card(s))")
        return uuid

    async def want(self, name: str, running: bool) -> None:
        """Record in desired state whether ``name`` should run (before acting on it)."""
        if running:
            identity = launch_identity(self._provider(name), self.config.settings.vllm)
            self.desired = self.desired.with_running(name, identity)
        else:
            self.desired = self.desired.without(name)
        await self._save_desired()

    async def ensure_weights(self, name: str) -> None:
        await self._ensure_weights(self._provider(name))

    async def fit(
        self, name: str, gone: frozenset[str] = frozenset(),
        residual: Mapping[str, int] | None = None,
    ) -> VramPlan:
        """The plan ``name`` would start with now, the backends in ``gone`` stopped (or asleep,
        keeping ``residual`` bytes) first."""
        return await asyncio.to_thread(
            self.planner.fit, self._provider(name), self.plan_view(), gone, residual
        )

    async def start_under(
        self, name: str, lease: GpuLease, timeout_s: float | None = None,
        planner: LaunchPlanner | None = None,
    ) -> float:
        """Launch ``name`` with its first attempt under ``lease`` and wait for it to serve; the
        startup seconds. On failure (crash, out of memory, plan, timeout) the attempt's engine
        is stopped, the keeper removed, and the error raised."""
        await self._drop_dead_keeper(name, lease)
        if name in self.keepers:
            raise RuntimeError(f"{name} already has a keeper")
        first = FirstAttempt(lease)
        self._launch(name, first=first, planner=planner)
        try:
            return await asyncio.wait_for(asyncio.shield(first.outcome), timeout_s)
        except BaseException as exc:
            if isinstance(exc, TimeoutError):
                log.warning("start.timeout", backend=name, timeout_s=timeout_s)
            await self.stop_under(name, lease)
            raise

    def has_live_keeper(self, name: str) -> bool:
        """A keeper whose loop runs (or whose engine sleeps): ``name`` is being kept running.
        A keeper whose loop ended (``failed``: crash loop, no plan) no longer keeps anything."""
        keeper = self.keepers.get(name)
        return keeper is not None and (keeper.running or keeper.asleep)

    async def _drop_dead_keeper(self, name: str, lease: GpuLease) -> None:
        """Clear a keeper whose loop ended (whatever it left is stopped) before a new start."""
        keeper = self.keepers.get(name)
        if keeper is not None and not keeper.running and not keeper.asleep:
            await keeper.stop(lease)
            del self.keepers[name]
            self._identity.pop(name, None)

    async def stop_under(
        self, name: str, lease: GpuLease, drain: Drain | None = None
    ) -> process.StopOutcome | None:
        """Stop ``name``'s engine (draining first when given) under the caller's lease."""
        keeper = self.keepers.get(name)
        if keeper is None:
            return None
        try:
            return await keeper.stop(lease, drain)
        finally:
            del self.keepers[name]
            self._identity.pop(name, None)

    async def sleep_under(
        self, name: str, lease: GpuLease, level: int, detail: str, drain: Drain | None = None
    ) -> None:
        """Put ``name``'s engine to sleep under the caller's lease; recorded in desired state."""
        await self.keepers[name].sleep(lease, level, detail, drain)
        self.desired = self.desired.with_running(name, self._identity[name], asleep=True)
        await self._save_desired()

    async def wake_under(self, name: str, lease: GpuLease) -> float:
        """Wake ``name``'s sleeping engine under the caller's lease; the seconds it took."""
        wake_s = await self.keepers[name].wake(lease)
        self.desired = self.desired.with_running(name, self._identity[name], asleep=False)
        await self._save_desired()
        return wake_s

    def asleep(self, name: str) -> bool:
        return self._asleep(name)

    def running_identity(self, name: str) -> Identity | None:
        return self._identity.get(name)

    def weights_bytes(self, name: str) -> int | None:
        """The size of ``name``'s weights on disk (None when its snapshot is not known here)."""
        snap = self._snapshots.get(name)
        return weights_bytes(snap) if snap is not None else None

    async def wake_needs_bytes(self, name: str) -> int | None:
        """What waking ``name`` takes on top of what it holds asleep: its slice of the card."""
        keeper = self.keepers.get(name)
        fraction = keeper.running_fraction if keeper is not None else None
        inv = await asyncio.to_thread(self._inventory.read)
        if fraction is None or not inv.available:
            return None
        gpu = next((g for g in inv.gpus if g.uuid == keeper.gpu_uuid), None) if keeper else None
        return int(fraction * gpu.memory_total_bytes) if gpu is not None else None

    async def free_bytes_after(
        self, name: str, gone: frozenset[str], residual: Mapping[str, int]
    ) -> int:
        """Free bytes on ``name``'s card once the backends in ``gone`` left (keeping ``residual``)."""
        view = self.plan_view()
        provider = self._provider(name)

        def read() -> int:
            gpu = without_owners(self.planner.read_gpu(provider.gpu, view), gone, residual)
            reserve = self.config.settings.gpu.reserve_mib * MIB
            return gpu.memory_free_bytes - reserve

        return await asyncio.to_thread(read)

    def log_tail(self, name: str, n: int = 20) -> list[str]:
        return tail_lines(log_path(self.config.paths.log_dir, name), n)

    # -- hung engines --------------------------------------------------------------------------
    def _start_background(self) -> None:
        if self._health is not None:
            spawn_task(self._tasks, self._unresponsive_loop(), "unresponsive")

    async def _unresponsive_loop(self) -> None:
        while True:
            await asyncio.sleep(UNRESPONSIVE_CHECK_S)
            self.check_unresponsive(time.time())

    def check_unresponsive(self, now: float) -> list[str]:
        """Restart every managed engine that has been ``down`` for ``restart_unresponsive_after_s``
        while its process lives (hung): the keeper stops it and its restart policy applies."""
        after_s = self.config.settings.health.restart_unresponsive_after_s
        if self._health is None or after_s is None:
            return []
        started: list[str] = []
        healths = self._health()
        for name, keeper in self.keepers.items():
            h = healths.get(name)
            if h is None or h.state is not BackendState.DOWN or now - h.since < after_s:
                continue
            if name in self._hang_restarts or keeper.child is None or keeper.child.exited:
                continue
            reason = f"down for {after_s:g} s while its process lives: {h.reason}"
            self._hang_restarts.add(name)
            spawn_task(self._tasks, self._stop_hung(name, keeper, reason), f"hung:{name}")
            started.append(name)
        return started

    async def _stop_hung(self, name: str, keeper: BackendKeeper, reason: str) -> None:
        try:
            async with self.locks.lease(keeper.gpu_uuid, f"restart hung {name}") as lease:
                await keeper.stop_unresponsive(lease, reason)
        finally:
            self._hang_restarts.discard(name)

    # -- shutdown ------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop every engine: all keepers halt, then each GPU's engines stop together under
        that GPU's lease (each waits for its own group and memory)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(k.halt() for k in self.keepers.values()))
        by_gpu: dict[str, list[BackendKeeper]] = {}
        for keeper in self.keepers.values():
            by_gpu.setdefault(keeper.gpu_uuid, []).append(keeper)

        async def stop_gpu(uuid: str, keepers: list[BackendKeeper]) -> None:
            async with self.locks.lease(uuid, "shutdown") as lease:
                await asyncio.gather(*(k.stop(lease) for k in keepers))

        await asyncio.gather(*(stop_gpu(u, ks) for u, ks in by_gpu.items()))
        log.info("manager.stopped", backends=list(self.keepers))
        self.keepers.clear()


def _plan_facts(weights: WeightsContext, provider: Provider) -> PlanFacts | None:
    """The hub's word on a model before its download: dimensions and weights' size (None when
    the hub cannot say; the download that follows reports why)."""
    try:
        plan = weights.plan(provider)
        if plan.model_config is None:
            return None
        return PlanFacts(model_dims(plan.model_config), weights.tensor_bytes(provider, plan.commit))
    except Exception as exc:  # noqa: BLE001 - only a planning hint: the download will say more
        log.info("weights.facts_unknown", backend=provider.name, error=type(exc).__name__)
        return None
