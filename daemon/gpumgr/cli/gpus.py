"""``gpumgr gpus [--json] [--simulate]``: every card, its memory and who holds it."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from gpumgr.cli.common import config_dir_option, emit_json, load_config_from_ctx
from gpumgr.cli.plan_inputs import attributed_inventory, open_backend
from gpumgr.config import Config
from gpumgr.errors import ConfigError, GpuUnavailable
from gpumgr.gpu import GpuInventory


def _opt(v: object, unit: str = "") -> str:
    return "n/a" if v is None else f"{v}{unit}"


def render_inventory(inv: GpuInventory, console: Console) -> None:
    """One table of cards, then one of processes with their owners."""
    cards = Table(title=f"GPUs ({inv.backend}, driver {inv.driver_version or 'n/a'})")
    for col in ("#", "name", "uuid", "total MiB", "used MiB", "free MiB", "temp", "util"):
        cards.add_column(col, justify="right" if "MiB" in col else "left")
    procs = Table(title="GPU processes")
    for col in ("gpu", "pid", "name", "kind", "used MiB", "owner"):
        procs.add_column(col, justify="right" if col in ("pid", "used MiB") else "left")
    for g in inv.gpus:
        cards.add_row(
            str(g.index), g.name, g.uuid, str(g.memory_total_mib), str(g.memory_used_mib),
            str(g.memory_free_mib), _opt(g.temperature_c, " C"), _opt(g.utilization_pct, "%"),
        )
        for p in g.processes:
            procs.add_row(str(g.index), str(p.pid), p.name, p.kind, _opt(p.used_mib), p.owner)
    console.print(cards)
    if procs.row_count:
        console.print(procs)
    for w in inv.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


@click.command("gpus")
@config_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the inventory as JSON.")
@click.option("--simulate", is_flag=True, help="Read the simulated GPUs of gpumgr.yaml.")
@click.pass_context
def gpus(ctx: click.Context, config_dir: str | None, as_json: bool, simulate: bool) -> None:
    """List the GPUs, their memory and the processes holding it (exit 1 without a GPU)."""
    cfg: Config | None
    try:
        cfg = load_config_from_ctx(ctx, config_dir, simulate=simulate)
        simulate = cfg.simulate
    except ConfigError:
        if simulate:
            raise
        cfg = None  # a hardware query still works without a registry; owners stay unknown
    inv = attributed_inventory(
        open_backend(cfg, simulate), list(cfg.providers.values()) if cfg else []
    )
    if as_json:
        emit_json(inv.to_dict())
    elif inv.available:
        render_inventory(
            inv, Console(width=None if sys.stdout.isatty() else 120)
        )
    if not inv.available:
        raise GpuUnavailable(inv.error or "GPU unavailable")
