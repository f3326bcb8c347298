"""``gpumgr plan``'s answer, made the same way by the running daemon and by the CLI alone.

Both ask ``gpumgr.plan.decide`` per card for the providers named (default: the ``active`` vLLM
ones) and render its decision as one JSON document; the daemon (``GET /v1/control/plan``)
knows its engines (pids, the slices they run with, its snapshots), the CLI alone guesses owners
from listening ports. ``source`` says which answered.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gpumgr.config import Config
from gpumgr.config.registry import Provider, ProviderStatus
from gpumgr.engines.vllm_kv import minimum_tokens
from gpumgr.errors import InputError
from gpumgr.plan import EstimateError
from gpumgr.plan.decide import Decision
from gpumgr.vllm_tables.releases import Release, release_for
from gpumgr.weights import WeightsContext

from .manager import BackendManager
from .prepare import PlanView, launch_for_budget, provider_release


def select_providers(cfg: Config, names: Sequence[str]) -> list[Provider]:
    """The named vLLM providers (bad names: ``InputError``), else the active ones."""
    if not names:
        return [p for p in cfg.vllm_providers if p.status is ProviderStatus.ACTIVE]
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


def by_card(providers: Sequence[Provider]) -> dict[int, list[Provider]]:
    out: dict[int, list[Provider]] = {}
    for p in providers:
        out.setdefault(p.gpu, []).append(p)
    return dict(sorted(out.items()))


def plan_document(
    decisions: Sequence[Decision],
    cfg: Config,
    *,
    snapshot_of: Callable[[Provider], Path | None],
    command: Sequence[str] | None,
    source: str,
    note: str,
    release_of: Callable[[Provider], Release] | None = None,
) -> dict[str, Any]:
    """``plan --json``: per card the plan weighed (``VramPlan.to_dict``), each instance with the
    exact argv it would launch, the Ollama models that would be unloaded, and the refusal."""
    gpus: list[dict[str, Any]] = []
    for d in decisions:
        plan, gpu = d.considered, d.gpu
        assert plan is not None and gpu is not None  # not a wake
        doc = plan.to_dict()
        doc["feasible"] = d.ok
        doc["gpu_name"] = gpu.name
        doc["unload_ollama"] = [m.name for m in d.unload]
        doc["refusal"] = d.refusal.message if d.refusal else None
        instances = []
        for inst in plan.instances:
            provider = cfg.providers[inst.provider]
            snap = snapshot_of(provider) or Path(f"<snapshot of {provider.hf_repo}>")
            release = release_of(provider) if release_of is not None else release_for(None)
            launch = launch_for_budget(
                provider, inst, gpu, snap, cfg.settings, command=command, base_env={},
                release=release,
            )
            entry = inst.to_dict()
            entry.update({
                "vllm_version": release.reported,
                "vllm_tables": release.table_version,
                "memory_model": "extensible_kv_cache" if release.extensible_kv_cache else "fixed",
                "kv_cache_tokens_min": minimum_tokens(inst.max_model_len, inst.max_concurrency),
                "gpu_index": gpu.index,
                "gpu_uuid": gpu.uuid,
                "port": provider.port,
                "hf_repo": provider.hf_repo,
                "served_model_name": provider.served_model_name,
                "served_names": provider.served_names,
                "argv": launch.argv,
            })
            instances.append(entry)
        doc["instances"] = instances
        gpus.append(doc)
    return {
        "feasible": all(d.ok for d in decisions),
        "simulated": cfg.simulate,
        "source": source,
        "source_note": note,
        "gpus": gpus,
    }


async def daemon_plan(manager: BackendManager, names: Sequence[str]) -> dict[str, Any]:
    """The running daemon's answer: ``decide`` for the chosen providers of each card against
    the live view (its engines' pids and running slices, its snapshots). Reads only."""
    cfg = manager.config
    chosen = select_providers(cfg, names)
    view = manager.plan_view()
    planner = manager.planner

    def run() -> dict[str, Any]:
        snaps = dict(view.snapshots)
        local = WeightsContext.from_config(cfg)
        for p in chosen:
            if p.name not in snaps and p.name not in view.facts:
                snap = local.local(p)
                if snap is None:
                    raise InputError(
                        f"{p.name}: no downloaded snapshot of {p.hf_repo} "
                        f"(run `gpumgr pull {p.name}` first)"
                    )
                snaps[p.name] = snap.path
        sized = PlanView(view.providers, snaps, view.managed_pids, view.running_fractions,
                         view.facts)
        decisions = []
        for _index, on_card in by_card(chosen).items():
            try:
                decisions.append(planner.decide_set(on_card, sized))
            except EstimateError as exc:
                raise InputError(str(exc)) from None
        env = os.environ if planner.base_env is None else planner.base_env
        return plan_document(
            decisions, cfg, snapshot_of=lambda p: snaps.get(p.name),
            command=planner.command, source="daemon", note="from the running daemon",
            release_of=lambda p: provider_release(p, planner.settings, planner.command, env,
                                                  planner.versions),
        )

    return await asyncio.to_thread(run)


__all__ = ["by_card", "daemon_plan", "plan_document", "select_providers"]
