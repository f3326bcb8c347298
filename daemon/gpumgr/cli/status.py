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
from gpumgr.sse import SseMessage, SseParser

_STATE_STYLE = {
    "up": "green", "starting": "yellow", "downloading": "cyan", "restarting": "yellow",
    "draining": "yellow", "stopping": "yellow", "sleeping": "blue", "rate_limited": "magenta",
    "down": "red", "failed": "bold red", "auth_failed": "red", "stopped": "dim",
    "disabled": "dim", "unknown": "dim",
}


def _base_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def fetch_status(listen: str, timeout_s: float = 3.0) -> dict[str, Any]:
    url = _base_url(listen) + "/v1/status"
    try:
        resp = httpx2.get(url, timeout=timeout_s)
        resp.raise_for_status()
        return dict(resp.json())
    except (httpx2.HTTPError, json.JSONDecodeError) as exc:
        raise DaemonUnavailable(f"gpumgr daemon not reachable at {url}: {type(exc).__name__}") from None


WIDE_COLUMNS = 120
"""Below this many columns the table keeps what matters: name, state, pid and the detail (why
a backend is down is the most important cell, never the one dropped)."""


def render_table(doc: dict[str, Any], width: int = 160) -> Group:
    """The GPUs and the backends of a status document, for a person, fitted to ``width``."""
    lines: list[Any] = []
    for gpu in doc.get("gpus", []):
        lines.append(
            f"[bold]GPU {gpu['index']}[/] {gpu['name']}  "
            f"{gpu['memory_used_mib']} / {gpu['memory_total_mib']} MiB used, "
            f"{gpu['memory_free_mib']} MiB free"
            + "".join(f"\n  pid {p['pid']}: {p['used_mib']} MiB ({p['owner']})"
                      for p in gpu.get("processes", []))
        )
    wide = width >= WIDE_COLUMNS
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    table.add_column("backend", no_wrap=True, overflow="ellipsis", max_width=None if wide else 16)
    if wide:
        table.add_column("type", no_wrap=True)
    table.add_column("state", no_wrap=True)
    if wide:
        table.add_column("models", no_wrap=True, overflow="ellipsis", max_width=40)
        table.add_column("port", no_wrap=True, min_width=4)
    table.add_column("pid", no_wrap=True, min_width=3)
    if wide:
        for col in ("util", "restarts"):
            table.add_column(col, no_wrap=True, min_width=len(col))
    table.add_column("detail", overflow="fold", ratio=1, min_width=20)
    for b in doc.get("backends", []):
        style = _STATE_STYLE.get(b["state"], "")
        state = f"[{style}]{b['state']}[/]" + (" (busy)" if b.get("busy") else "")
        if b.get("suspect"):
            state += " ?"
        pid = str(b.get("pid") or "")
        detail = b.get("detail") or ""
        if wide:
            util = f"{b['gpu_memory_utilization']:.2f}" if b.get("gpu_memory_utilization") else ""
            table.add_row(b["name"], b["type"], state, ", ".join(b.get("models", [])),
                          str(b.get("port") or ""), pid, util, str(b.get("restarts", 0)), detail)
        else:
            table.add_row(b["name"], state, pid, detail)
    lines.append(table)
    return Group(*lines)


def watch_status(listen: str, width: int | None) -> None:
    """Redraw the table on every change the daemon pushes (``/v1/events``); Ctrl-C ends it."""
    from rich.live import Live

    base = _base_url(listen)
    console = Console(width=width)
    with Live(render_table(fetch_status(listen), console.width), console=console,
              auto_refresh=False) as live:
        while True:
            try:
                with httpx2.stream("GET", base + "/v1/events",
                                   timeout=httpx2.Timeout(5.0, read=30.0)) as events:
                    parser = SseParser()
                    for chunk in events.iter_bytes():
                        if any(isinstance(item, SseMessage) for item in parser.feed(chunk)):
                            live.update(render_table(fetch_status(listen), console.width),
                                        refresh=True)
            except httpx2.HTTPError as exc:
                raise DaemonUnavailable(f"gpumgr daemon not reachable at {base}: "
                                        f"{type(exc).__name__}") from None


@click.command()
@config_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@click.option("--watch", is_flag=True, help="Keep redrawing the table as the daemon pushes changes.")
@click.pass_context
def status(ctx: click.Context, config_dir: str | None, as_json: bool, watch: bool) -> None:
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
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
    if watch and not as_json:
        try:
            watch_status(listen, width)
        except KeyboardInterrupt:
            return
    doc = fetch_status(listen)
    if as_json:
        emit_json(doc)
    else:
        console = Console(width=width)
        console.print(render_table(doc, console.width))
