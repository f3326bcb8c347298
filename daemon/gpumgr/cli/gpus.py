"""``gpumgr gpus [--json] [--simulate]``: every card, its memory and who holds it."""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape

from gpumgr.cli.common import config_dir_option, emit_json, load_config_from_ctx
from gpumgr.cli.plan_inputs import attributed_inventory, open_backend
from gpumgr.cli.tables import Column, console_for_output, fit_table
from gpumgr.config import Config
from gpumgr.errors import ConfigError, GpuUnavailable
from gpumgr.gpu import GpuInventory


def _opt(v: object, unit: str = "") -> str:
    return "n/a" if v is None else f"{v}{unit}"


CARD_COLUMNS = [
    Column("#", keep=True, justify="right"),
    Column("name", keep=True),
    Column("uuid", priority=0),
    Column("total MiB", priority=4, justify="right"),
    Column("used MiB", priority=5, justify="right"),
    Column("free MiB", priority=6, justify="right"),
    Column("temp", priority=2, justify="right"),
    Column("util", priority=3, justify="right"),
]
PROCESS_COLUMNS = [
    Column("gpu", priority=3, justify="right"),
    Column("pid", keep=True, justify="right"),
    Column("name", priority=2, max_width=24),
    Column("kind", priority=1),
    Column("used MiB", priority=4, justify="right"),
    Column("owner", keep=True),
]
"""The owner (a provider's name) and the pid are kept whole; the process name is shortened."""


def render_inventory(inv: GpuInventory, console: Console) -> None:
    """One table of cards, then one of processes with their owners, fitted to the width."""
    cards: list[list[str]] = []
    procs: list[list[str]] = []
    for g in inv.gpus:
        cards.append([
            str(g.index), escape(g.name), g.uuid, str(g.memory_total_mib),
            str(g.memory_used_mib), str(g.memory_free_mib), _opt(g.temperature_c, " C"),
            _opt(g.utilization_pct, "%"),
        ])
        for p in g.processes:
            procs.append([str(g.index), str(p.pid), escape(p.name), p.kind, _opt(p.used_mib),
                          escape(p.owner)])
    console.print(fit_table(CARD_COLUMNS, cards, console.width,
                            title=f"GPUs ({inv.backend}, driver {inv.driver_version or 'n/a'})"))
    if procs:
        console.print(fit_table(PROCESS_COLUMNS, procs, console.width, title="GPU processes"))
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
        render_inventory(inv, console_for_output())
    if not inv.available:
        raise GpuUnavailable(inv.error or "GPU unavailable")
