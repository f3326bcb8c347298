"""``gpumgr plan [--json] [--simulate] [PROVIDER...]``: would these vLLM providers fit now?

Default: the ``active`` vLLM providers; naming providers plans that set instead
(``gpumgr plan qwen-14b`` answers "would the 14B fit right now?"). The running daemon answers
when one listens on the control socket (it knows its engines, their slices and its snapshots);
otherwise the CLI decides alone, with the same ``gpumgr.plan.decide``; the output says which.
Exit 0 when every GPU's plan fits, 1 when one does not (the explanation printed, one line on
stderr), 2 for bad input.
"""

from __future__ import annotations

import os
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from gpumgr.actions.plan_report import by_card, plan_document, select_providers
from gpumgr.cli.common import config_dir_option, emit_json, load_config_from_ctx
from gpumgr.cli.control import ControlClient
from gpumgr.cli.plan_inputs import (
    attributed_inventory,
    model_facts,
    ollama_models,
    open_backend,
    snapshot_path,
)
from gpumgr.cli.tables import Column, console_for_output, fit_table
from gpumgr.config import Config
from gpumgr.config.registry import Provider
from gpumgr.errors import DaemonUnavailable, InputError, PlanInfeasible
from gpumgr.plan import EstimateError, InstanceRequest, PlannerConstants
from gpumgr.plan.decide import Decision, Room, decide
from gpumgr.actions.prepare import provider_release
from gpumgr.engines.vllm_version import CACHE_FILE as VERSIONS_FILE, VllmVersions
from gpumgr.plan.provider import instance_request
from gpumgr.sim import SIM_ENGINE_COMMAND

__all__ = ["plan", "select_providers"]


def local_document(cfg: Config, chosen: list[Provider], note: str) -> dict[str, Any]:
    """Decide without a daemon: owners guessed from listening ports, no running slices known."""
    simulate = cfg.simulate
    all_providers = list(cfg.providers.values())
    inv = attributed_inventory(open_backend(cfg, simulate), all_providers).require()
    loaded = ollama_models(all_providers)
    room = Room(
        reserve_bytes=cfg.settings.gpu.reserve_mib * (1 << 20),
        ollama_reservation_bytes=cfg.settings.ollama.reservation_mib * (1 << 20),
        eviction=cfg.settings.ollama.eviction,
    )
    decisions: list[Decision] = []
    for index, on_card in by_card(chosen).items():
        requests: list[InstanceRequest] = []
        constants = PlannerConstants.from_settings(cfg.settings.planner,
                                                   inv.gpu(index).compute_capability)
        for p in on_card:
            dims, snap_bytes, hub_bytes = model_facts(p, cfg, simulate)
            try:
                requests.append(instance_request(
                    p, dims, constants=constants,
                    snapshot_weights_bytes=snap_bytes, hub_weights_bytes=hub_bytes,
                ))
            except EstimateError as exc:
                raise InputError(f"{p.name}: {exc}") from None
        decisions.append(
            decide(inv.gpu(index), requests, {p.name for p in on_card}, room=room, ollama=loaded)
        )
    command = SIM_ENGINE_COMMAND if simulate else None
    versions = VllmVersions(cfg.paths.state_dir / VERSIONS_FILE)
    return plan_document(
        decisions, cfg, snapshot_of=lambda p: snapshot_path(p, cfg, simulate),
        command=command, source="local", note=note,
        release_of=lambda p: provider_release(p, cfg.settings, command, os.environ, versions),
    )


def daemon_document(cfg: Config, names: tuple[str, ...]) -> dict[str, Any] | str:
    """The running daemon's answer, or why there is none (the note a local answer carries)."""
    socket = cfg.paths.control_socket
    try:
        doc = ControlClient(socket).get_json("/v1/control/plan", {"name": list(names)})
    except DaemonUnavailable as exc:
        return f"local: no daemon at {socket}" if not socket.exists() else f"local: {exc}"
    if bool(doc.get("simulated")) != cfg.simulate:
        how = "simulated" if doc.get("simulated") else "real"
        return f"local: the daemon at {socket} plans {how} GPUs"
    return doc


PLAN_COLUMNS = [
    Column("#", priority=0, justify="right"),
    Column("provider", keep=True),
    Column("fraction", keep=True, justify="right"),
    Column("budget MiB", priority=6, justify="right"),
    Column("weights MiB", priority=2, justify="right"),
    Column("KV MiB", priority=1, justify="right"),
    Column("KV tokens", priority=3, justify="right"),
    Column("max len", priority=5, justify="right"),
    Column("concurrency", priority=4, justify="right"),
]
"""The provider and its slice are always shown whole; the rest as the width allows."""


def render_plan(gpu: dict[str, Any], console: Console) -> None:
    """One card's plan as a table (from the JSON document, whoever made it)."""
    extra = gpu["ollama_extra_reserved_mib"]
    console.print(
        f"GPU {gpu['gpu_index']} {gpu['gpu_name']}: {gpu['memory_total_mib']} MiB total, "
        f"{gpu['memory_free_mib']} MiB free, reserve {gpu['reserve_mib']} MiB, "
        f"Ollama {gpu['ollama_resident_mib']} MiB resident"
        + (f" (+{extra} MiB reserved)" if extra else "")
        + f", {max(0, gpu['available_mib'])} MiB available to the plan"
    )
    if gpu["unload_ollama"]:
        console.print(f"unloads Ollama model(s) first: {', '.join(gpu['unload_ollama'])}")
    rows = [
        [
            str(i["start_index"] + 1),
            escape(i["provider"]),
            f"{i['gpu_memory_utilization']:.2f}" + (" (pinned)" if i["pinned"] else ""),
            str(i["budget_mib"]),
            f"{i['weights_bytes'] // (1 << 20)} ({i['weights_source']})",
            str(i["kv_cache_mib"]),
            str(i["kv_tokens"]),
            str(i["max_model_len"]),
            f"{i['max_concurrency']:.2f}x",
        ]
        for i in gpu["instances"]
    ]
    console.print(fit_table(PLAN_COLUMNS, rows, console.width))
    if gpu["feasible"]:
        console.print(f"[green]fits[/green]: {max(0, gpu['unused_mib'])} MiB left unused")
    for p in gpu["problems"]:
        console.print(f"[red]does not fit[/red]: {p['provider']} short by {p['shortfall_mib']} MiB")
        console.print(f"  {p['reason']}")
        for fix in p["fixes"]:
            console.print(f"  fix: {fix}")
    for i in gpu["instances"]:
        model = ("extensible KV cache: the fraction is a cap; the engine may come up with less "
                 "KV cache than planned" if i.get("memory_model") == "extensible_kv_cache"
                 else "KV cache fixed at start; refused if the slice is not free")
        console.print(f"{i['provider']}: vLLM {i.get('vllm_version') or i.get('vllm_tables')} "
                      f"({model})", markup=False)
    if not gpu["feasible"] and not gpu["problems"] and gpu["refusal"]:
        console.print(f"[red]does not fit[/red]: {gpu['refusal']}")


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
    chosen = select_providers(cfg, names)
    answer = daemon_document(cfg, names)
    doc = answer if isinstance(answer, dict) else local_document(cfg, chosen, answer)
    if as_json:
        emit_json(doc)
    else:
        console = console_for_output()
        console.print(doc["source_note"], markup=False)
        if not doc["gpus"]:
            console.print("nothing to plan: no active vLLM providers (name some to plan them)")
        for gpu in doc["gpus"]:
            render_plan(gpu, console)
    refusals = [g["refusal"] for g in doc["gpus"] if g["refusal"]]
    if refusals:
        problems = [p for g in doc["gpus"] for p in g["problems"]]
        raise PlanInfeasible(problems[0]["message"] if problems else refusals[0])
