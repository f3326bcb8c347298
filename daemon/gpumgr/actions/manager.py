"""The backend manager: the keepers and the primitives the reconciler acts with.

It owns the keepers (one per managed backend that should run), the per-GPU leases, the launch
planner, the restart policy, the local snapshots and the persisted desired state's value. It
decides nothing about what should run: that is the reconciler's (``actions.reconciler``), the
only caller of ``launch``, ``stop_keeper``, ``start_under``/``stop_under``/``sleep_under``/
``wake_under`` and the only writer of ``desired``. It reports through the supervisor's events and
never keeps a backend's state itself: the state machine decides that from the events.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

import httpx2
import structlog

from gpumgr.config import Config
from gpumgr.config.registry import Provider
from gpumgr.engines.vllm_version import CACHE_FILE as VERSIONS_FILE, VllmVersions
from gpumgr.gpu.contexts import CACHE_FILE as CONTEXTS_FILE, MeasuredContexts
from gpumgr.errors import GpuUnavailable
from gpumgr.gpu import GpuBackend, GpuInventory
from gpumgr.health.machine import BackendHealth
from gpumgr.supervisor import process
from gpumgr.secrets import read_secret
from gpumgr.supervisor.events import BackendFailed, EventSink, OllamaEvicted
from gpumgr.supervisor.records import ChildRecord, ChildRecords
from gpumgr.supervisor.restart import RestartPolicy
from gpumgr.supervisor.system import REAL, System

from .cards import Cards
from .desired import DesiredState, DesiredStore, Identity, launch_identity, managed_providers
from .keeper import BackendKeeper
from .lease import GpuLease, GpuLocks
from .ollama_room import OllamaRoom
from .prepare import LaunchPlanner, PlanView, engine_health_url, plan_view, provider_release
from .weights import BackendWeights, HubEndpoint, WeightsHook, default_hub
from .start import LaunchSpec, Prepare, PrepareHint, StartContext
from .starter import FirstAttempt
from .startup_times import StartupTimes
from .stop import Drain, stop_engine

log = structlog.get_logger(__name__)

EVICTION_NOTICE_S = 0.3
"""How long the router is given to see that Ollama models are about to be unloaded (it follows
the status's events; a few milliseconds locally) before they are."""

HealthReader = Callable[[], Mapping[str, BackendHealth]]


@dataclass
class ReconcileReport:
    """What one reconcile did, for the log and for tests."""

    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """Backends the owner's file newly asks for that were not started: backend → why (the
    port is another's, the card cannot hold the set). Warnings: the rest was applied."""

    def warnings(self) -> list[str]:
        return [f"{name} not started: {why}" for name, why in self.refused.items()]


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
        hub: HubEndpoint = default_hub,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._inventory = inventory
        self._sink = sink
        self._health = health
        self._system = system
        self._base_env = base_env
        self._command = command
        self.locks = GpuLocks()
        self.http = httpx2.AsyncClient()
        """The one client of every call to the engines (health, drain, sleep, wake)."""
        self.records = ChildRecords(config.paths.state_dir, system)
        self.store = DesiredStore(config.paths.state_dir, system)
        self.startup_times = StartupTimes(config.paths.state_dir, system)
        self.desired = DesiredState()
        self.keepers: dict[str, BackendKeeper] = {}
        self._identity: dict[str, Identity] = {}
        """Backend → the launch identity its keeper runs with."""
        self.weights = BackendWeights(lambda: self.config, sink, hub, on_weights)
        self.cards = Cards()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.configure(config)

    # -- configuration -----------------------------------------------------------------------
    def configure(self, config: Config) -> None:
        """Take a (new) configuration's settings: later starts use them; nothing running is
        touched (the reconciler decides what a reload restarts)."""
        self.config = config
        settings = config.settings
        self.policy = RestartPolicy.from_settings(settings.restart)
        self.ctx = StartContext.for_settings(
            settings, config.paths.log_dir, self.records, self.locks, self._sink,
            memory_released=self._memory_released, system=self._system,
            startup_times=self.startup_times, http=self.http,
        )
        self.planner = LaunchPlanner(
            settings=settings,
            inventory=self._inventory,
            command=self._command,
            base_env=self._base_env,  # the daemon's RuntimeEnv (engines get its allow-list)
            withheld_env={p.env_var for p in config.providers.values() if p.env_var},
            ollama=OllamaRoom(list(config.providers.values())),
            announce_eviction=self._announce_eviction,
            versions=VllmVersions(config.paths.state_dir / VERSIONS_FILE),  # h19: vllm --version cache
            contexts=MeasuredContexts(config.paths.state_dir / CONTEXTS_FILE),  # h19
        )

    def _provider(self, name: str) -> Provider:
        return managed_providers(self.config)[name]

    def known(self) -> frozenset[str]:
        """The backends gpumgr may run now (managed providers of the configuration)."""
        return frozenset(managed_providers(self.config))

    def healths(self) -> Mapping[str, BackendHealth]:
        return self._health() if self._health is not None else {}

    # -- desired state (its value; the reconciler writes it) ---------------------------------
    async def load_desired(self) -> DesiredState | None:
        return await asyncio.to_thread(self.store.load)

    async def save_desired(self) -> None:
        try:
            await asyncio.to_thread(self.store.save, self.desired)
        except OSError as exc:  # what should run is still known here; the next boot asks the file
            log.error("desired.write_failed", path=str(self.store.path), error=str(exc))

    # -- reading -----------------------------------------------------------------------------
    def managed_pids(self) -> dict[int, str]:
        """pid (== pgid) → backend of the engines running now."""
        return {k.child.pid: n for n, k in self.keepers.items() if k.child is not None}

    def plan_view(self, wanted: Collection[str] | None = None) -> PlanView:
        """A frozen picture of what runs, for the planner's worker thread (a sleeping engine is
        not planned: what it still holds, its CUDA context, is taken like any process's);
        ``wanted``: the backends that should run, when not (yet) the desired state's."""
        return plan_view(managed_providers(self.config),
                         self.desired.names if wanted is None else wanted, self.weights,
                         self.keepers)

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

    async def _memory_released(self, pids: frozenset[int]) -> bool:
        inv = await asyncio.to_thread(self._inventory.read)
        if not inv.available:
            return True  # nothing to wait for that we could see
        return not any(p.pid in pids for g in inv.gpus for p in g.processes)

    async def warm_versions(self) -> None:
        """Ask each managed provider's vLLM for its ``--version`` now (cached by path and mtime),
        off the event loop, so a first start does not pay for it under its GPU lease (a real
        ``vllm --version`` imports torch: seconds)."""
        env = self._base_env if self._base_env is not None else os.environ
        for provider in managed_providers(self.config).values():
            await asyncio.to_thread(provider_release, provider, self.config.settings,
                                    self._command, env, self.planner.versions)

    # -- boot ----------------------------------------------------------------------------------
    def attach(self, first_read: GpuInventory) -> None:
        """Before the first command: the loop the planner's threads report to, and the cards."""
        self._loop = asyncio.get_running_loop()
        self.cards.read(first_read)

    async def refresh_gpus(self) -> None:
        """Read the cards again when they could not be read before (a driver came back)."""
        if self.cards.error is not None:
            self.cards.read(await asyncio.to_thread(self._inventory.read))

    async def stop_adopted(self, child: process.ChildProcess, record: ChildRecord) -> None:
        """Stop an adopted engine that is not (or no longer) the one asked for; provably ours."""
        gpu_uuid = record.gpu_uuid or "unknown"
        async with self.locks.lease(gpu_uuid, f"stop adopted {child.backend}") as lease:
            await stop_engine(lease, gpu_uuid, child, self.ctx.stop, self._memory_released)
        await asyncio.to_thread(self.records.remove, child.backend)

    async def settled(self, names: Iterable[str]) -> None:
        """Wait until the keepers of ``names`` know what they hold (an adopted engine answered
        or was given up; asleep or awake)."""
        await asyncio.gather(*(k.settled.wait() for n in names
                               if (k := self.keepers.get(n)) is not None))

    def keep_running(self, name: str) -> None:
        """A reload left ``name``'s identity as it is: later starts use the new settings."""
        self.keepers[name].reconfigure(
            self._preparer(self._provider(name), self.desired.running[name]), self.ctx, self.policy
        )

    def launch(
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
        if adopted is None:  # its weights are looked up first
            self.weights.expect(name)
        uuid = gpu_uuid or self.cards.known_uuid(provider.gpu)
        why = self.cards.why_not(provider.gpu) if adopted is None or uuid is None else None
        if why is not None or uuid is None:
            why = why or f"GPU {provider.gpu} not found"
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
            weights=functools.partial(self.weights.ensure, provider),
            health_url=engine_health_url(provider),
            served_name=provider.served_names[0] if provider.served_names else None,
            api_key=(read_secret(provider.env_var, self._base_env if self._base_env is not None
                                 else os.environ) if provider.requires_api_key else None),
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
        run on the same card (bounded; the hub's metadata, not a download)."""
        managed = managed_providers(self.config)
        await self.weights.await_facts([
            n for n, p in managed.items()
            if n != provider.name and n in self.desired.running and self.has_live_keeper(n)
            and p.gpu == provider.gpu
        ])

    async def stop_keeper(self, name: str) -> None:
        """Stop ``name``'s keeper and engine under its card's lease (no drain: a reload's stop)."""
        keeper = self.keepers.get(name)
        if keeper is None:
            return
        await keeper.halt()  # a start in flight lets go of the lease
        async with self.locks.lease(keeper.gpu_uuid, f"stop {name}") as lease:
            await keeper.stop(lease)
        del self.keepers[name]
        self._identity.pop(name, None)

    # -- primitives for operators (``actions.operator``) ------------------------------------
    def provider(self, name: str) -> Provider:
        return self._provider(name)

    def gpu_uuid_of(self, name: str) -> str:
        """The card ``name`` runs (or would run) on."""
        keeper = self.keepers.get(name)
        if keeper is not None:
            return keeper.gpu_uuid
        return self.cards.uuid(self._provider(name).gpu)

    async def ensure_weights(self, name: str) -> None:
        await self.weights.ensure(self._provider(name))

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
        self.launch(name, first=first, planner=planner)
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
        """Put ``name``'s engine to sleep under the caller's lease."""
        await self.keepers[name].sleep(lease, level, detail, drain)

    async def wake_under(self, name: str, lease: GpuLease) -> float:
        """Wake ``name``'s sleeping engine under the caller's lease; the seconds it took."""
        return await self.keepers[name].wake(lease)

    def asleep(self, name: str) -> bool:
        keeper = self.keepers.get(name)
        return keeper is not None and keeper.asleep

    def running_identity(self, name: str) -> Identity | None:
        return self._identity.get(name)

    def weights_bytes(self, name: str) -> int | None:
        return self.weights.bytes_of(name)

    # -- shutdown ------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop every engine: all keepers halt, then each GPU's engines stop together under
        that GPU's lease (each waits for its own group and memory)."""
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
        await self.http.aclose()

