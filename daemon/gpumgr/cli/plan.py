"""``gpumgr plan [--json] [--simulate] [PROVIDER...]``: would these vLLM providers fit now?

Default: the ``active`` vLLM providers; naming providers plans that set instead
(``gpumgr plan qwen-14b`` answers "would the 14B fit right now?"). Exit 0 when every GPU's
plan fits, 1 when one does not (the explanation printed, one line on stderr), 2 for bad input.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from gpumgr.cli.common import config_dir_option, emit_json, load_config_from_ctx
from gpumgr.cli.plan_inputs import (
    attributed_inventory,
    model_facts,
    ollama_models,
    open_backend,
    snapshot_path,
)
from gpumgr.config import Config
from gpumgr.config.registry import Provider, ProviderStatus
from gpumgr.actions.prepare import launch_for_budget, provider_release
from gpumgr.engines.vllm_kv import minimum_tokens
from gpumgr.engines.vllm_version import CACHE_FILE, VllmVersions
from gpumgr.vllm_tables.releases import Release
from gpumgr.errors import InputError, PlanInfeasible
from gpumgr.gpu import MIB, GpuInfo
from gpumgr.plan import (
    EstimateError,
    InstanceBudget,
    InstanceRequest,
    PlannerConstants,
    VramPlan,
    plan_slices,
    request_for_gpu,
)
from gpumgr.plan.provider import instance_request
from gpumgr.sim import SIM_ENGINE_COMMAND


def select_providers(cfg: Config, names: tuple[str, ...]) -> list[Provider]:
    """The named vLLM providers (bad names: ``InputError``), else the active ones."""
    if not names:
        return [
            p for p in cfg.vllm_providers if p.status is ProviderStatus.ACTIVE
        ]
    out: list[Provider] = []
    for n in names:
        p = cfg.providers.get(n)
        if p is None:
            known = ", ".join(sorted(x.name for x in cfg.vllm_providers))
            raise InputError(f"unknown provider {n!r} (vLLM providers: {known})")
        if not p.is_vllm:
            raise InputError(f"{n} is a {p.type.value} provider; only vLLM providers are planned")
        if not p.runs_here:
            raise InputError(f"{n} is {p.status.value}; only active or standby providers run")
        if p not in out:
            out.append(p)
    return out


def release_of(provider: Provider, cfg: Config) -> Release:
    """The vLLM the provider runs (its pin, else its command's ``--version``, cached in the
    state_dir by path and mtime, as the daemon does)."""
    command = SIM_ENGINE_COMMAND if cfg.simulate else None
    versions = VllmVersions(cfg.paths.state_dir / CACHE_FILE)
    return provider_release(provider, cfg.settings, command, os.environ, versions)


def launch_argv(provider: Provider, budget: InstanceBudget, gpu: GpuInfo, cfg: Config,
                release: Release | None = None) -> list[str]:
    """The exact vLLM argument list the daemon would start for this budget.

    The snapshot path is the downloaded one; before ``gpumgr pull`` it is shown as a placeholder.
    """
    snap = snapshot_path(provider, cfg, cfg.simulate) or Path(f"<snapshot of {provider.hf_repo}>")
    launch = launch_for_budget(
        provider, budget, gpu, snap, cfg.settings,
        command=SIM_ENGINE_COMMAND if cfg.simulate else None, base_env={}, release=release,
    )
    return launch.argv


def instance_json(
    budget: InstanceBudget, provider: Provider, gpu: GpuInfo, cfg: Config
) -> dict[str, Any]:
    """One provider's entry in ``plan --json``, with the ``argv`` it would launch."""
    entry = budget.to_dict()
    release = release_of(provider, cfg)
    entry.update(
        {
            "vllm_version": release.reported,
            "vllm_tables": release.table_version,
            "memory_model": "extensible_kv_cache" if release.extensible_kv_cache else "fixed",
            "kv_cache_tokens_min": minimum_tokens(budget.max_model_len, budget.max_concurrency),
            "gpu_index": gpu.index,
            "gpu_uuid": gpu.uuid,
            "port": provider.port,
            "hf_repo": provider.hf_repo,
            "served_model_name": provider.served_model_name,
            "served_names": provider.served_names,
            "argv": launch_argv(provider, budget, gpu, cfg, release),
        }
    )
    return entry


def plan_json(plans: list[tuple[VramPlan, GpuInfo]], cfg: Config) -> dict[str, Any]:
    out_plans = []
    for plan, gpu in plans:
        d = plan.to_dict()
        d["instances"] = [
            instance_json(i, cfg.providers[i.provider], gpu, cfg) for i in plan.instances
        ]
        out_plans.append(d)
    return {
        "feasible": all(p.feasible for p, _ in plans),
        "simulated": cfg.simulate,
        "gpus": out_plans,
    }


def render_plan(plan: VramPlan, gpu: GpuInfo, console: Console) -> None:
    r = plan.request
    console.print(
        f"GPU {gpu.index} {gpu.name}: {r.total_bytes // MIB} MiB total, "
        f"{r.free_bytes // MIB} MiB free, reserve {r.reserve_bytes // MIB} MiB, "
        f"Ollama {r.ollama_held_bytes // MIB} MiB resident"
        + (f" (+{r.ollama_extra_bytes // MIB} MiB reserved)" if r.ollama_extra_bytes else "")
        + f", {max(0, r.available_bytes) // MIB} MiB available to the plan"
    )
    t = Table()
    for col in ("#", "provider", "fraction", "budget MiB", "weights MiB",
                "KV MiB", "KV tokens", "max len", "concurrency"):
        t.add_column(col, justify="left" if col == "provider" else "right")
    for i in plan.instances:
        t.add_row(
            str(i.start_index + 1),
            i.provider,
            f"{i.fraction:.2f}" + (" (pinned)" if i.pinned else ""),
            str(i.budget_bytes // MIB),
            f"{i.estimate.weights_bytes // MIB} ({i.estimate.weights_source})",
            str(i.kv_cache_bytes // MIB),
            str(i.kv_tokens),
            str(i.max_model_len),
            f"{i.max_concurrency:.2f}x",
        )
    console.print(t)
    if plan.feasible:
        console.print(f"[green]fits[/green]: {max(0, plan.unused_bytes) // MIB} MiB left unused")
    for p in plan.problems:
        console.print(f"[red]does not fit[/red]: {p.provider} short by {p.shortfall_mib} MiB")
        console.print(f"  {p.reason}")
        for fix in p.fixes:
            console.print(f"  fix: {fix}")


@click.command("plan")
@config_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--simulate", is_flag=True, help="Plan against the simulated GPUs of gpumgr.yaml.")
@click.argument("names", metavar="[PROVIDER]...", nargs=-1)
@click.pass_context
def plan(
    ctx: click.Context, config_dir: str | None, as_json: bool, simulate: bool,
    names: tuple[str, ...],
) -> None:
    """Compute each vLLM provider's --gpu-memory-utilization slice for the GPU as it is now."""
    cfg = load_config_from_ctx(ctx, config_dir, simulate=simulate)
    simulate = cfg.simulate
    chosen = select_providers(cfg, names)
    all_providers = list(cfg.providers.values())
    inv = attributed_inventory(open_backend(cfg, simulate), all_providers).require()
    requests: dict[int, list[InstanceRequest]] = {}
    for p in chosen:
        cc = next((g.compute_capability for g in inv.gpus if g.index == p.gpu), None)
        constants = PlannerConstants.from_settings(cfg.settings.planner, cc)
        dims, snap_bytes, hub_bytes = model_facts(p, cfg, simulate)
        try:
            req = instance_request(
                p, dims, constants=constants,
                snapshot_weights_bytes=snap_bytes, hub_weights_bytes=hub_bytes,
            )
        except EstimateError as exc:
            raise InputError(f"{p.name}: {exc}") from None
        requests.setdefault(p.gpu, []).append(req)

    loaded = ollama_models(all_providers)
    plans: list[tuple[VramPlan, GpuInfo]] = []
    for index, reqs in sorted(requests.items()):
        gpu = inv.gpu(index)
        plans.append(
            (
                plan_slices(
                    request_for_gpu(
                        gpu,
                        reqs,
                        reserve_bytes=cfg.settings.gpu.reserve_mib * MIB,
                        ollama_models=loaded,
                        ollama_reservation_bytes=cfg.settings.ollama.reservation_mib * MIB,
                    )
                ),
                gpu,
            )
        )
    if as_json:
        emit_json(plan_json(plans, cfg))
    else:
        console = Console(width=None if sys.stdout.isatty() else 120)
        if not plans:
            console.print("nothing to plan: no active vLLM providers (name some to plan them)")
        for vram_plan, gpu in plans:
            render_plan(vram_plan, gpu, console)
            for i in vram_plan.instances:
                r = release_of(cfg.providers[i.provider], cfg)
                model = ("extensible KV cache: the fraction is a cap; the engine may come up "
                         "with less KV cache than planned" if r.extensible_kv_cache
                         else "KV cache fixed at start; refused if the slice is not free")
                console.print(f"{i.provider}: vLLM {r.label} ({model})")
    problems = [s for vram_plan, _ in plans for s in vram_plan.problems]
    if problems:
        raise PlanInfeasible(problems[0].message)
