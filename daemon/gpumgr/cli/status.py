"""``gpumgr status``: the live status document, as a table for a person or JSON for a script.

Reads ``GET /v1/status`` from the daemon's read-only listener; when the daemon cannot be reached
it says so and exits 1 (it does not pass off an old ``status.json`` as live, but names it).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
import httpx2
from rich.console import Console, Group
from rich.table import Table

from gpumgr.cli.common import config_dir_option, emit_json, load_config_from_ctx
from gpumgr.config.paths import resolve_listen
from gpumgr.config.settings import Settings
from gpumgr.errors import ConfigError, DaemonUnavailable

_STATE_STYLE = {
    "up": "green", "starting": "yellow", "downloading": "cyan", "restarting": "yellow",
    "draining": "yellow", "stopping": "yellow", "sleeping": "blue", "rate_limited": "magenta",
    "down": "red", "failed": "bold red", "auth_failed": "red", "stopped": "dim",
    "disabled": "dim", "unknown": "dim",
}


def fetch_status(listen: str, timeout_s: float = 3.0) -> dict[str, Any]:
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    url = f"http://{host}:{port}/v1/status"
    try:
        resp = httpx2.get(url, timeout=timeout_s)
        resp.raise_for_status()
        return dict(resp.json())
    except (httpx2.HTTPError, json.JSONDecodeError) as exc:
        raise DaemonUnavailable(f"gpumgr daemon not reachable at {url}: {type(exc).__name__}") from None


def render_table(doc: dict[str, Any]) -> Group:
    """The GPUs and the backends of a status document, for a person."""
    lines: list[Any] = []
    for gpu in doc.get("gpus", []):
        lines.append(
            f"[bold]GPU {gpu['index']}[/] {gpu['name']}  "
            f"{gpu['memory_used_mib']} / {gpu['memory_total_mib']} MiB used, "
            f"{gpu['memory_free_mib']} MiB free"
            + "".join(f"\n  pid {p['pid']}: {p['used_mib']} MiB ({p['owner']})" for p in gpu.get("processes", []))
        )
    table = Table(show_edge=False, header_style="bold")
    for col in ("backend", "type", "state"):
        table.add_column(col, no_wrap=True)
    table.add_column("models", no_wrap=True, overflow="ellipsis", max_width=40)
    for col in ("port", "pid", "util", "restarts"):
        table.add_column(col, no_wrap=True, min_width=len(col))
    table.add_column("detail", overflow="fold")
    for b in doc.get("backends", []):
        style = _STATE_STYLE.get(b["state"], "")
        table.add_row(
            b["name"], b["type"], f"[{style}]{b['state']}[/]" + (" (busy)" if b.get("busy") else ""),
            ", ".join(b.get("models", [])), str(b.get("port") or ""), str(b.get("pid") or ""),
            f"{b['gpu_memory_utilization']:.2f}" if b.get("gpu_memory_utilization") else "",
            str(b.get("restarts", 0)), b.get("detail") or "",
        )
    lines.append(table)
    return Group(*lines)


@click.command()
@config_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@click.pass_context
def status(ctx: click.Context, config_dir: str | None, as_json: bool) -> None:
    """Show the live status of every backend (from the running daemon)."""
    try:
        listen = load_config_from_ctx(ctx, config_dir).listen
    except ConfigError as exc:
        # The daemon runs the configuration it loaded; a file broken since must not hide it.
        listen = resolve_listen(Settings(), os.environ)
        click.echo(
            f"warning: configuration has {len(exc.issues)} error(s) (see `gpumgr validate`); "
            f"asking the daemon at {listen}",
            err=True,
        )
    doc = fetch_status(listen)
    if as_json:
        emit_json(doc)
    else:
        console = Console(width=None if sys.stdout.isatty() else 160)
        console.print(render_table(doc))
