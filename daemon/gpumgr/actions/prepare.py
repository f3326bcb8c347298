"""Prepare one engine's launch just before it starts: inventory re-read → plan → command line.

Called under the GPU's lock (``start.start_engine``), so the plan sees the memory every earlier
start really took. The plan covers every provider meant to run on the card (their own running
instances count as reclaimable, so a restart keeps its original slice); after an out-of-memory
failure the provider is planned alone on what is free now, and only a strictly smaller slice is
offered, else ``PlanInfeasible`` with the planner's explanation.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog

from gpumgr.config.registry import Provider
from gpumgr.config.settings import Settings
from gpumgr.engines.vllm import GpuFacts, VllmLaunch, build_vllm_launch, resolve_vllm_command
from gpumgr.engines.vllm_kv import DEFAULT_BLOCK_SIZE, minimum_tokens
from gpumgr.engines.vllm_version import VllmVersions
from gpumgr.vllm_tables.parser import ServeArgsError, parse_serve_args
from gpumgr.vllm_tables.releases import Release, release_for
from gpumgr.errors import PlanInfeasible
from gpumgr.gpu import MIB, GpuBackend, GpuInfo
from gpumgr.gpu.attribution import attribute
from gpumgr.gpu.contexts import MeasuredContexts
from gpumgr.modelfiles import ModelDims, read_model_dims, weights_bytes
from gpumgr.supervisor.process import ChildProcess
from gpumgr.plan import (
    InstanceBudget,
    InstanceRequest,
    OllamaModel,
    PlannerConstants,
    VramPlan,
)
from gpumgr.plan.decide import AfterOom, Decision, Eviction, Room, decide, without_owners
from gpumgr.plan.provider import instance_request

from .ollama_room import OllamaRoom
from .start import LaunchSpec, Prepare, PrepareHint

log = structlog.get_logger(__name__)

OLLAMA_UNLOAD_WAIT_S = 10.0
"""How long a start waits for the GPU to show an unloaded Ollama model's memory back."""

@runtime_checkable
class SeenByEngines(Protocol):
    """An inventory whose cards an engine finds through its environment (the simulated card's
    state file); NVML's cards need nothing of the kind."""

    def engine_environment(self) -> Mapping[str, str]: ...


def inventory_environment(inventory: GpuBackend) -> Mapping[str, str]:
    """What an engine needs in its environment to see the cards of ``inventory`` (given to the
    engine explicitly, never written into the daemon's own environment). The launch's own
    environment wins over it (an operator's ``GPUMGR_SIM_LOAD_SECONDS`` over the settings')."""
    return inventory.engine_environment() if isinstance(inventory, SeenByEngines) else {}


def engine_health_url(provider: Provider) -> str:
    """Where a managed engine's ``/health`` answers: the host it binds (its base_url's loopback
    host, ``::1`` included) and its port. Readiness, adoption and the probes all look there."""
    host = provider.bind_host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{provider.port}/health"


@dataclass(frozen=True)
class PlanFacts:
    """What the planner needs of a model whose weights are still coming: its ``config.json``
    dimensions and its weights' size, from the hub's listing."""

    dims: ModelDims
    weights_bytes: int


@dataclass(frozen=True)
class PlanView:
    """What the planner needs to know of the daemon, taken on the event loop just before a
    start and handed to the worker thread that plans: nothing there calls back into the daemon.
    """

    providers: tuple[Provider, ...]
    """The providers meant to run whose weights are local, in the registry's order."""
    snapshots: Mapping[str, Path]
    """provider → local snapshot directory."""
    managed_pids: Mapping[int, str]
    """pid (== pgid) → backend of the children running now, for attributing GPU memory."""
    running_fractions: Mapping[str, float]
    """Backend → the slice its live engine runs with. A running engine keeps its slice while
    another one starts (it is not restarted), so the plan holds it at that slice."""
    facts: Mapping[str, PlanFacts] = field(default_factory=dict)
    """provider → planning facts of a model still downloading: it is planned with the others
    (so the first engine to start does not take the room of one whose weights come later)."""


def launch_for_budget(
    provider: Provider,
    budget: InstanceBudget,
    gpu: GpuInfo,
    snapshot_dir: Path,
    settings: Settings,
    *,
    command: Sequence[str] | None,
    base_env: Mapping[str, str],
    withheld_env: Collection[str] = (),
    release: Release | None = None,
) -> VllmLaunch:
    """The vLLM command line for one planned instance (the daemon's and ``plan --json``'s);
    ``release``: the provider's vLLM (flags checked against its table)."""
    config_json = snapshot_dir / "config.json"
    return build_vllm_launch(
        provider,
        fraction=budget.fraction,
        snapshot_dir=snapshot_dir,
        gpu=GpuFacts(gpu.uuid, gpu.compute_capability or "7.5"),
        settings=settings.vllm,
        max_model_len=budget.max_model_len,
        max_num_seqs=budget.max_num_seqs,
        command=command,
        base_env=base_env,
        withheld_env=withheld_env,
        checkpoint_quantization=(
            read_model_dims(config_json).quantization_method if config_json.is_file() else None
        ),
        release=release,
    )


def provider_release(
    provider: Provider, settings: Settings, command: Sequence[str] | None,
    env: Mapping[str, str], versions: VllmVersions | None,
) -> Release:
    """The vLLM a provider runs: its ``vllm_version`` pin, else what its command's
    ``--version`` says (cached by path and mtime), else 0.33.0 assumed."""
    if provider.vllm_version or versions is None:
        return release_for(provider.vllm_version)
    try:
        argv = resolve_vllm_command(provider, settings.vllm, command)
    except Exception:  # noqa: BLE001 - an empty vllm.command: the launch reports it
        return release_for(None)
    return versions.answer(argv, env).release


def block_size(provider: Provider, release: Release) -> int:
    """The engine's KV block size: ``--block-size`` in ``extra_args``, else vLLM's default."""
    try:
        value = parse_serve_args(list(provider.extra_args), release.flags).value("block_size")
    except ServeArgsError:
        return DEFAULT_BLOCK_SIZE
    return int(value) if value and value.isdigit() else DEFAULT_BLOCK_SIZE


@dataclass(frozen=True)
class LaunchPlanner:
    """Builds ``LaunchSpec``s for the vLLM providers of one daemon (runs in a worker thread)."""

    settings: Settings
    inventory: GpuBackend
    command: Sequence[str] | None = None
    """Prefix replacing the vLLM executable (the simulated engine), else the configured one."""
    base_env: Mapping[str, str] | None = None
    withheld_env: Collection[str] = ()
    """Variables never passed to a vLLM child: every provider's ``env_var`` (secrets)."""
    ollama: OllamaRoom | None = None
    """The local Ollama, whose models may be unloaded to make room (``ollama.eviction``)."""
    announce_eviction: Callable[[str, tuple[str, ...]], None] | None = None
    """Told (from this worker thread, blocking until it is published) which Ollama models are
    about to be unloaded for which provider, so the router stops sending them requests first:
    one would load a model straight back into the memory the engine is about to take."""
    contexts: MeasuredContexts | None = None
    """CUDA contexts engines were seen to take per card (``<state_dir>/cuda-contexts.json``)."""
    versions: VllmVersions = field(default_factory=lambda: VllmVersions(None))
    """``vllm --version`` answers (pass one persisted in the state_dir to keep them across
    restarts); the release keys the flags table and what the start is checked against."""

    def _request(self, provider: Provider, view: PlanView,
                 gpu: GpuInfo | None = None) -> InstanceRequest:
        card = self.contexts.get(gpu.uuid) if self.contexts is not None and gpu else None
        constants = PlannerConstants.from_settings(
            self.settings.planner, gpu.compute_capability if gpu else None, card)
        snap = view.snapshots.get(provider.name)
        if snap is None:
            facts = view.facts[provider.name]
            return instance_request(provider, facts.dims, constants=constants,
                                    hub_weights_bytes=facts.weights_bytes)
        return instance_request(
            provider, read_model_dims(snap), constants=constants,
            snapshot_weights_bytes=weights_bytes(snap),
        )

    def room(self, evict: bool | None = None) -> Room:
        """The settings a decision uses; ``evict`` True lets Ollama models be unloaded even
        under ``ollama.eviction: never`` (``gpumgr start --evict-ollama``), False forbids it."""
        policy: Eviction = self.settings.ollama.eviction
        if evict is True and policy == "never":
            policy = "unload_idle"
        elif evict is False:
            policy = "never"
        return Room(
            reserve_bytes=self.settings.gpu.reserve_mib * MIB,
            ollama_reservation_bytes=self.settings.ollama.reservation_mib * MIB,
            eviction=policy,
        )

    def read_gpu(self, index: int, view: PlanView) -> GpuInfo:
        managed = dict(view.managed_pids)
        inv = attribute(self.inventory.read().require(), managed, managed)
        return inv.gpu(index)

    def decide(
        self,
        provider: Provider,
        view: PlanView,
        *,
        gone: frozenset[str] = frozenset(),
        residual: Mapping[str, int] | None = None,
        wake: bool = False,
        evict: bool | None = None,
        hint: PrepareHint | None = None,
    ) -> Decision:
        """May ``provider`` start (or, ``wake``, its sleeping engine wake) now, the backends in
        ``gone`` having left first (asleep ones keeping ``residual`` bytes)? Reads the card,
        Ollama's loaded models and the model files; changes nothing (blocking: run it in a
        thread). After an out-of-memory exit ``hint`` says which slices are refused."""
        return self.decide_set([provider], view, gone=gone, residual=residual, wake=wake,
                               evict=evict, hint=hint)

    def decide_set(
        self,
        providers: Sequence[Provider],
        view: PlanView,
        *,
        gone: frozenset[str] = frozenset(),
        residual: Mapping[str, int] | None = None,
        wake: bool = False,
        evict: bool | None = None,
        hint: PrepareHint | None = None,
        gpu: GpuInfo | None = None,
        ollama: Sequence[OllamaModel] | None = None,
    ) -> Decision:
        """``decide`` for providers of one card started together (``gpumgr plan``); ``gpu`` and
        ``ollama`` when the caller has already read them."""
        first = providers[0]
        card = gpu if gpu is not None else self.read_gpu(first.gpu, view)
        names = {p.name for p in providers}
        together = [p for p in view.providers if p.gpu == first.gpu and p.name not in gone]
        together += [p for p in providers if p.name not in {q.name for q in together}]
        if ollama is None and self.ollama is not None:
            ollama = self.ollama.loaded()
        after_oom = (
            AfterOom(hint.after_oom_fraction, hint.oom_kind)
            if hint is not None and hint.after_oom_fraction is not None else None
        )
        return decide(
            card,
            [] if wake else [self._request(p, view, card) for p in together],
            names,
            room=self.room(evict),
            running_fractions=view.running_fractions,
            gone=gone,
            residual=residual,
            ollama=ollama,
            wake=wake,
            after_oom=after_oom,
        )

    def _unload_and_wait(
        self, provider: Provider, gpu: GpuInfo, models: Sequence[OllamaModel], view: PlanView
    ) -> GpuInfo:
        """Announce, unload ``models`` and wait (bounded) until the GPU shows most of their
        memory back."""
        assert self.ollama is not None
        if self.announce_eviction is not None:
            self.announce_eviction(provider.name, tuple(m.name for m in models))
        if not self.ollama.unload(models, f"room for {provider.name}"):
            return gpu
        expected = gpu.memory_free_bytes + int(0.9 * sum(m.vram_bytes for m in models))
        deadline = time.monotonic() + OLLAMA_UNLOAD_WAIT_S
        while True:
            now = self.read_gpu(provider.gpu, view)
            if now.memory_free_bytes >= expected or time.monotonic() >= deadline:
                return now
            time.sleep(0.1)

    def plan_for(
        self, provider: Provider, hint: PrepareHint, view: PlanView, evict: bool | None = None
    ) -> tuple[GpuInfo, VramPlan]:
        """The plan that decides ``provider``'s slice now: ``decide`` on the card as it is; the
        Ollama models it names are unloaded (announced first) and the card read again, then
        ``decide`` once more on what really came back (unloading nothing further). A refusal
        is ``PlanInfeasible`` with the decision's one line."""
        gpu = self.read_gpu(provider.gpu, view)
        decision = self.decide_set([provider], view, hint=hint, evict=evict, gpu=gpu)
        if decision.unload and self.ollama is not None:
            gpu = self._unload_and_wait(provider, gpu, decision.unload, view)
            decision = self.decide_set([provider], view, hint=hint, evict=False, gpu=gpu)
        if decision.refusal is not None or decision.plan is None:
            raise PlanInfeasible(decision.refusal.message if decision.refusal else "no plan")
        return gpu, decision.plan

    def make_room_to_wake(self, provider: Provider, view: PlanView) -> None:
        """Before ``provider``'s sleeper wakes: unload (announced first, then waited for) the
        Ollama models the wake's decision names, as a start does; the wake itself then finds
        its slice free (or fails as before). Blocking: run it in a thread."""
        gpu = self.read_gpu(provider.gpu, view)
        decision = self.decide_set([provider], view, wake=True, gpu=gpu)
        if decision.unload and self.ollama is not None:
            self._unload_and_wait(provider, gpu, decision.unload, view)

    def fit(
        self, provider: Provider, view: PlanView, gone: frozenset[str] = frozenset(),
        residual: Mapping[str, int] | None = None,
    ) -> VramPlan:
        """Deprecated (use ``decide``): the plan weighed for ``provider``, feasible or not."""
        considered = self.decide(provider, view, gone=gone, residual=residual).considered
        assert considered is not None  # not a wake: a plan is always weighed
        return considered

    def launch_spec(self, provider: Provider, hint: PrepareHint, view: PlanView) -> LaunchSpec:
        gpu, plan = self.plan_for(provider, hint, view)
        inst = plan.instance(provider.name)
        snap = view.snapshots[provider.name]
        env = os.environ if self.base_env is None else self.base_env
        release = provider_release(provider, self.settings, self.command, env, self.versions)
        launch = launch_for_budget(
            provider, inst, gpu, snap, self.settings,
            command=self.command,
            base_env=env,
            withheld_env=self.withheld_env,
            release=release,
        )
        assert provider.port is not None  # build_vllm_launch refuses a provider without one
        log.info(
            "start.planned",
            backend=provider.name,
            fraction=inst.fraction,
            free_mib=gpu.memory_free_bytes // MIB,
            max_model_len=inst.max_model_len,
        )
        return LaunchSpec(
            backend=provider.name,
            argv=launch.argv,
            env={**inventory_environment(self.inventory), **launch.env},
            port=provider.port,
            gpu_uuid=gpu.uuid,
            fraction=inst.fraction,
            health_url=engine_health_url(provider),
            kv_cache_tokens_planned=inst.kv_tokens,
            kv_cache_tokens_min=minimum_tokens(inst.max_model_len, inst.max_concurrency),
            kv_block_size=block_size(provider, release),
            vllm_version=release.reported or release.label,
        )

    def preparer(self, provider: Provider, view: Callable[[], PlanView]) -> Prepare:
        """The ``prepare`` callable a keeper takes: ``view`` is taken on the event loop, then
        NVML and file reads run in a worker thread."""

        async def prepare(hint: PrepareHint) -> LaunchSpec:
            return await asyncio.to_thread(self.launch_spec, provider, hint, view())

        return prepare


__all__ = ["LaunchPlanner", "PlanFacts", "PlanView", "engine_health_url", "launch_for_budget",
           "without_owners"]


def plan_view(managed: Mapping[str, Provider], wanted: Collection[str], weights: BackendWeightsView,
              keepers: Mapping[str, KeeperView]) -> PlanView:
    """What runs, frozen for a worker thread: the providers that should run whose weights (or
    hub facts) are known, except sleeping engines (what a sleeper still holds is simply taken,
    like any process's memory), with the pids and slices of the live engines."""
    facts = weights.facts()
    return PlanView(
        providers=tuple(
            p for n, p in managed.items()
            if n in wanted and (n in weights.snapshots or n in facts)
            and not (n in keepers and keepers[n].asleep)
        ),
        snapshots=dict(weights.snapshots),
        facts=facts,
        managed_pids={k.child.pid: n for n, k in keepers.items() if k.child is not None},
        running_fractions={n: f for n, k in keepers.items()
                           if (f := k.running_fraction) is not None},
    )


class BackendWeightsView(Protocol):
    snapshots: dict[str, Path]

    def facts(self) -> dict[str, PlanFacts]: ...


class KeeperView(Protocol):
    @property
    def asleep(self) -> bool: ...

    @property
    def child(self) -> ChildProcess | None: ...

    @property
    def running_fraction(self) -> float | None: ...
