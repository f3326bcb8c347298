"""``gpumgr status``: the live status document, as a table for a person or JSON for a script.

Reads ``GET /v1/status`` from the daemon's read-only listener; when the daemon cannot be reached
it says so and exits 1 (it does not pass off an old ``status.json`` as live, but names it).
The table is laid out for the width it has (``cli.tables``); ``--watch`` is ``cli.watch``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click
import httpx2
from rich.console import Group
from rich.markup import escape
from rich.padding import Padding
from rich.text import Text

from gpumgr.cli.common import config_dir_option, emit_json, load_config_from_ctx
from gpumgr.cli.policy_lines import policy_lines
from gpumgr.cli.tables import (
    Column,
    build_table,
    cell_width,
    choose_columns,
    console_for_output,
)
from gpumgr.config.paths import resolve_listen
from gpumgr.config.settings import Settings
from gpumgr.errors import ConfigError, DaemonUnavailable

_STATE_STYLE = {
    "up": "green", "starting": "yellow", "downloading": "cyan", "restarting": "yellow",
    "draining": "yellow", "stopping": "yellow", "sleeping": "blue", "rate_limited": "magenta",
    "down": "red", "failed": "bold red", "auth_failed": "red", "stopped": "dim",
    "disabled": "dim", "unknown": "dim",
}


def base_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def fetch_status(listen: str, timeout_s: float = 3.0) -> dict[str, Any]:
    url = base_url(listen) + "/v1/status"
    try:
        resp = httpx2.get(url, timeout=timeout_s)
        resp.raise_for_status()
        return dict(resp.json())
    except (httpx2.HTTPError, json.JSONDecodeError) as exc:
        raise DaemonUnavailable(f"gpumgr daemon not reachable at {url}: {type(exc).__name__}") from None


STATUS_COLUMNS = [
    Column("backend", keep=True),
    Column("type", priority=3),
    Column("state", keep=True),
    Column("models", priority=1, max_width=40),
    Column("port", priority=2, justify="right"),
    Column("pid", priority=5, justify="right"),
    Column("util", priority=0, justify="right"),
    Column("restarts", priority=4, justify="right"),
    Column("detail", flexible=True),
]
"""The order on screen; as the width shrinks the optional columns go, lowest priority first.
The name, the state and the detail (why a backend is down is the most important cell) stay."""
_NAME, _STATE, _PID, _DETAIL = 0, 2, 5, 8


def _state_cell(b: dict[str, Any]) -> str:
    style = _STATE_STYLE.get(b["state"], "")
    state = f"[{style}]{escape(b['state'])}[/]" if style else escape(str(b["state"]))
    if b.get("busy"):
        state += " (busy)"
    if b.get("suspect"):
        state += " ?"
    return state


def _backend_row(b: dict[str, Any]) -> list[str]:
    util = f"{b['gpu_memory_utilization']:.2f}" if b.get("gpu_memory_utilization") else ""
    return [escape(str(b["name"])), escape(str(b.get("type", ""))), _state_cell(b),
            escape(", ".join(b.get("models", []))), str(b.get("port") or ""),
            str(b.get("pid") or ""), util, str(b.get("restarts", 0)),
            escape(str(b.get("detail") or ""))]


def _stacked(rows: list[list[str]]) -> Group:
    """For a width where name, state and detail do not fit side by side: one line of name,
    state and pid per backend, its detail wrapped on the lines under it."""
    name_w = max([len("backend")] + [cell_width(r[_NAME]) for r in rows])
    state_w = max([len("state")] + [cell_width(r[_STATE]) for r in rows])
    out: list[Any] = [Text(f"{'backend'.ljust(name_w)}  {'state'.ljust(state_w)}  pid",
                           style="bold", no_wrap=True)]
    for r in rows:
        line = Text.from_markup(r[_NAME]) + " " * (name_w - cell_width(r[_NAME]) + 2)
        line += Text.from_markup(r[_STATE]) + " " * (state_w - cell_width(r[_STATE]) + 2)
        line += r[_PID]
        line.no_wrap = True
        out.append(line)
        if r[_DETAIL]:
            out.append(Padding(Text.from_markup(r[_DETAIL], overflow="fold"), (0, 0, 0, 4)))
    return Group(*out)


def render_table(doc: dict[str, Any], width: int = 160) -> Group:
    """The GPUs and the backends of a status document, for a person, laid out for ``width``:
    every column that fits; narrower, name, state, pid and detail; narrower still, the detail
    under each row. The name and the state are never shortened."""
    lines: list[Any] = []
    for gpu in doc.get("gpus", []):
        lines.append(
            f"[bold]GPU {gpu['index']}[/] {escape(str(gpu['name']))}  "
            f"{gpu['memory_used_mib']} / {gpu['memory_total_mib']} MiB used, "
            f"{gpu['memory_free_mib']} MiB free"
            + "".join(f"\n  pid {p['pid']}: {p['used_mib']} MiB ({escape(str(p['owner']))})"
                      for p in gpu.get("processes", []))
        )
    rows = [_backend_row(b) for b in doc.get("backends", [])]
    chosen = choose_columns(STATUS_COLUMNS, rows, width)
    lines.append(_stacked(rows) if chosen is None else build_table(STATUS_COLUMNS, rows, chosen))
    lines.extend(policy_lines(doc))  # the lifecycle policies' numbers (docs/policies.md)
    return Group(*lines)


def status_listen(ctx: click.Context, config_dir: str | None) -> str:
    """Where the daemon listens: from the configuration, or (a file broken since the daemon
    loaded it must not hide the daemon) from the environment and defaults, with a warning."""
    try:
        return load_config_from_ctx(ctx, config_dir).listen
    except ConfigError as exc:
        listen = resolve_listen(Settings(), os.environ)
        click.echo(
            f"warning: configuration has {len(exc.issues)} error(s) (see `gpumgr validate`); "
            f"asking the daemon at {listen}",
            err=True,
        )
        return listen


@click.command()
@config_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@click.option("--watch", is_flag=True,
              help="Keep going: on a terminal redraw the table on each change; piped, print one "
                   "line per change (with --json: one JSON document per change). Ends on "
                   "Ctrl-C or SIGTERM.")
@click.pass_context
def status(ctx: click.Context, config_dir: str | None, as_json: bool, watch: bool) -> None:
    """Show the live status of every backend (from the running daemon)."""
    listen = status_listen(ctx, config_dir)
    if watch:
        from gpumgr.cli.watch import watch_status

        watch_status(listen, as_json=as_json)
        return
    doc = fetch_status(listen)
    if as_json:
        emit_json(doc)
    else:
        console = console_for_output()
        console.print(render_table(doc, console.width))
