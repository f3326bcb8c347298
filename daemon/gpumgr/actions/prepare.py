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
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from gpumgr.config.registry import Provider
from gpumgr.config.settings import Settings
from gpumgr.engines.vllm import GpuFacts, VllmLaunch, build_vllm_launch, resolve_vllm_command
from gpumgr.engines.vllm_kv import DEFAULT_BLOCK_SIZE, minimum_tokens
from gpumgr.engines.vllm_version import VllmVersions
from gpumgr.vllm_tables.parser import ServeArgsError, parse_serve_args
from gpumgr.vllm_tables.releases import Release, release_for
from gpumgr.errors import PlanInfeasible
from gpumgr.gpu import MIB, OWNER_OLLAMA, GpuBackend, GpuInfo, GpuProcess
from gpumgr.gpu.attribution import attribute
from gpumgr.gpu.contexts import MeasuredContexts
from gpumgr.modelfiles import ModelDims, read_model_dims, weights_bytes
from gpumgr.plan import (
    InstanceBudget,
    InstanceRequest,
    OllamaModel,
    PlannerConstants,
    VramPlan,
    plan_slices,
    ollama_unload_set,
    request_for_gpu,
)
from gpumgr.plan.provider import instance_request

from .ollama_room import OllamaRoom
from .start import LaunchSpec, Prepare, PrepareHint

log = structlog.get_logger(__name__)

OLLAMA_UNLOAD_WAIT_S = 10.0
"""How long a start waits for the GPU to show an unloaded Ollama model's memory back."""

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

    def _plan(
        self,
        gpu: GpuInfo,
        providers: Sequence[Provider],
        starting: str,
        view: PlanView,
        ollama_models: Sequence[OllamaModel] | None = None,
    ) -> VramPlan:
        running = view.running_fractions
        requests = [
            replace(r, pinned_fraction=running[r.provider])
            if r.provider != starting and r.provider in running
            else r
            for r in (self._request(p, view, gpu) for p in providers)
        ]
        return plan_slices(
            request_for_gpu(
                gpu,
                requests,
                reserve_bytes=self.settings.gpu.reserve_mib * MIB,
                ollama_models=ollama_models,
                ollama_reservation_bytes=self.settings.ollama.reservation_mib * MIB,
            )
        )

    def read_gpu(self, index: int, view: PlanView) -> GpuInfo:
        managed = dict(view.managed_pids)
        inv = attribute(self.inventory.read().require(), managed, managed)
        return inv.gpu(index)

    def _plan_with_room(
        self, provider: Provider, together: Sequence[Provider], view: PlanView
    ) -> tuple[GpuInfo, VramPlan]:
        """The plan on the GPU as it is, after unloading Ollama models if the policy allows
        and the plan needs it (see ``gpumgr.actions.ollama_room``)."""
        gpu = self.read_gpu(provider.gpu, view)
        policy = self.settings.ollama.eviction
        loaded = self.ollama.loaded() if self.ollama else None
        if self.ollama and loaded and policy == "unload_all":
            gpu = self._unload_and_wait(provider, gpu, loaded, view)
            loaded = self.ollama.loaded()
        plan = self._plan(gpu, together, provider.name, view, loaded)
        if plan.feasible or not (self.ollama and loaded) or policy == "never":
            return gpu, plan
        shortfall = max(p.shortfall_bytes for p in plan.problems)
        victims = ollama_unload_set(plan.request, shortfall)
        if not victims:
            return gpu, plan
        gpu = self._unload_and_wait(provider, gpu, victims, view)
        return gpu, self._plan(gpu, together, provider.name, view, self.ollama.loaded())

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
        self, provider: Provider, hint: PrepareHint, view: PlanView
    ) -> tuple[GpuInfo, VramPlan]:
        """The plan that decides ``provider``'s slice now (see the module doc). After an
        out-of-memory exit, a slice that would repeat it is refused: the joint plan first, then
        the provider alone on what is free now, else ``PlanInfeasible``."""
        together = [p for p in view.providers if p.gpu == provider.gpu]
        if provider.name not in {p.name for p in together}:
            together.append(provider)
        gpu, plan = self._plan_with_room(provider, together, view)
        if hint.after_oom_fraction is None:
            if not plan.feasible:
                raise PlanInfeasible("; ".join(p.message for p in plan.problems))
            return gpu, plan
        if plan.feasible and not hint.refuses(plan.instance(provider.name).fraction):
            return gpu, plan
        alone = self._plan(gpu, [provider], provider.name, view)
        if alone.feasible and not hint.refuses(alone.instance(provider.name).fraction):
            return gpu, alone
        why = "; ".join(p.message for p in (alone.problems or plan.problems))
        way = "larger" if hint.needs_larger else "smaller"
        raise PlanInfeasible(
            f"{provider.name}: out of memory with --gpu-memory-utilization "
            f"{hint.after_oom_fraction:g} and no {way} slice fits"
            + (f" ({why})" if why else "")
        )

    def fit(
        self, provider: Provider, view: PlanView, gone: frozenset[str] = frozenset(),
        residual: Mapping[str, int] | None = None,
    ) -> VramPlan:
        """Would ``provider`` fit now, with the backends in ``gone`` stopped (or asleep, still
        holding ``residual`` bytes: their CUDA context) and their memory back? The engines that
        stay keep their running slices. Changes nothing: when ``ollama.eviction`` would unload
        Ollama models at the start, the plan is made as if they were unloaded (the start that
        follows does it), so the check and the start agree."""
        gpu = without_owners(self.read_gpu(provider.gpu, view), gone, residual or {})
        together = [p for p in view.providers if p.gpu == provider.gpu and p.name not in gone]
        if provider.name not in {p.name for p in together}:
            together.append(provider)
        loaded = self.ollama.loaded() if self.ollama else None
        policy = self.settings.ollama.eviction
        if loaded and policy == "unload_all":
            return self._plan(_after_unload(gpu, loaded), together, provider.name, view, [])
        plan = self._plan(gpu, together, provider.name, view, loaded)
        if plan.feasible or not loaded or policy == "never":
            return plan
        victims = ollama_unload_set(plan.request, max(p.shortfall_bytes for p in plan.problems))
        if not victims:
            return plan
        left = [m for m in loaded if m not in victims]
        return self._plan(_after_unload(gpu, victims), together, provider.name, view, left)

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
            env=launch.env,
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


def without_owners(gpu: GpuInfo, owners: frozenset[str], residual: Mapping[str, int]) -> GpuInfo:
    """``gpu`` as it will be once the processes of ``owners`` are gone (or asleep, keeping
    ``residual[owner]`` bytes) and the rest of their memory back."""
    if not owners:
        return gpu
    kept: list[GpuProcess] = []
    leaving = 0
    for p in gpu.processes:
        if p.owner not in owners:
            kept.append(p)
            continue
        stays = min(residual.get(p.owner, 0), p.used_bytes or 0)
        leaving += (p.used_bytes or 0) - stays
        if stays:
            kept.append(replace(p, used_bytes=stays))
            residual = {**residual, p.owner: 0}  # one residual per owner
    return replace(
        gpu,
        processes=tuple(kept),
        memory_free_bytes=gpu.memory_free_bytes + leaving,
        memory_used_bytes=max(0, gpu.memory_used_bytes - leaving),
    )


def _after_unload(gpu: GpuInfo, models: Sequence[OllamaModel]) -> GpuInfo:
    """``gpu`` as it will be once Ollama unloaded ``models`` (their VRAM back, taken off what
    Ollama's processes hold)."""
    freed = sum(m.vram_bytes for m in models)
    left = freed
    processes: list[GpuProcess] = []
    for p in gpu.processes:
        if p.owner == OWNER_OLLAMA and left > 0 and p.used_bytes:
            take = min(left, p.used_bytes)
            left -= take
            if p.used_bytes - take:
                processes.append(replace(p, used_bytes=p.used_bytes - take))
            continue
        processes.append(p)
    return replace(
        gpu,
        processes=tuple(processes),
        memory_free_bytes=gpu.memory_free_bytes + freed,
        memory_used_bytes=max(0, gpu.memory_used_bytes - freed),
    )
