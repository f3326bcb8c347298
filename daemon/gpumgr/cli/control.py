"""``gpumgr start|stop|restart|swap|reload|logs``: ask the running daemon, over its control socket.

The daemon does the work (under its GPU lease, recorded in desired state); these commands send
the request, print its progress line by line as it streams back, and exit 0 when it succeeded,
1 when it failed (with the engine's last log lines), 2 when the request itself was refused as
invalid (unknown or ambiguous name). A daemon that is not running is one line saying how to
start it, exit 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx2

from gpumgr.cli.common import config_dir_option, load_config_from_ctx
from gpumgr.config import ConfigError
from gpumgr.config.paths import resolve_paths
from gpumgr.config.settings import Settings
from gpumgr.errors import DaemonUnavailable, GpumgrError, InputError


class ControlRefused(GpumgrError):
    """The daemon refused the request (busy, or failed)."""


class ControlInputError(InputError):
    """The daemon refused the request as invalid (unknown or ambiguous name)."""


class NoLogYet(GpumgrError):
    """A managed engine with an empty or missing log (exit 1: nothing wrong with the request)."""


def socket_path(ctx: click.Context, config_dir: str | None) -> Path:
    """The control socket of the configured ``runtime_dir`` (a broken config on disk still
    finds the socket through the environment and defaults)."""
    try:
        return load_config_from_ctx(ctx, config_dir).paths.control_socket
    except ConfigError:
        paths = resolve_paths(Settings(), os.environ, is_root=os.geteuid() == 0, home=Path.home())
        return paths.control_socket


class ControlClient:
    """HTTP over the daemon's unix socket."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self.path = path
        transport = httpx2.HTTPTransport(uds=str(path))
        self._client = httpx2.Client(transport=transport, base_url="http://localhost",
                                     timeout=httpx2.Timeout(timeout_s, read=None))

    def _unavailable(self, exc: Exception) -> DaemonUnavailable:
        how = "start it with `systemctl start gpumgr` (or `gpumgr daemon`)"
        if not self.path.exists():
            return DaemonUnavailable(f"gpumgr daemon is not running (no socket at {self.path}); {how}")
        if isinstance(exc, PermissionError) or "Permission denied" in str(exc):
            return DaemonUnavailable(
                f"no permission on {self.path}: run as root or as a member of its group")
        return DaemonUnavailable(f"gpumgr daemon not reachable at {self.path} "
                                 f"({type(exc).__name__}); {how}")

    def _refused(self, response: httpx2.Response) -> GpumgrError:
        try:
            detail = str(response.json().get("detail"))
        except (json.JSONDecodeError, AttributeError):
            detail = response.text.strip() or f"HTTP {response.status_code}"
        if response.status_code in (400, 404, 413, 422):
            return ControlInputError(detail)
        return ControlRefused(detail)

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST ``body``; the NDJSON lines of the operation as they arrive."""
        try:
            with self._client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._refused(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield dict(json.loads(line))
        except (httpx2.TransportError, OSError) as exc:
            raise self._unavailable(exc) from None

    def post(self, path: str) -> dict[str, Any]:
        try:
            response = self._client.post(path)
        except (httpx2.TransportError, OSError) as exc:
            raise self._unavailable(exc) from None
        if response.status_code != 200:
            raise self._refused(response)
        return dict(response.json())

    def get_json(self, path: str, params: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        """GET ``path``; its JSON object (a refusal raised as for the other calls; a daemon
        that does not answer within ``timeout_s`` counts as unavailable)."""
        try:
            response = self._client.get(path, params=params, timeout=timeout_s)
        except (httpx2.TransportError, OSError) as exc:
            raise self._unavailable(exc) from None
        if response.status_code != 200:
            raise self._refused(response)
        return dict(response.json())

    def lines(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        try:
            with self._client.stream("GET", path, params=params) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._refused(response)
                yield from response.iter_lines()
        except (httpx2.TransportError, OSError) as exc:
            raise self._unavailable(exc) from None


def run_operation(ctx: click.Context, config_dir: str | None, path: str,
                  body: dict[str, Any]) -> None:
    """Stream one operation's progress to stdout; exit 1 (with the log tail) if it failed."""
    client = ControlClient(socket_path(ctx, config_dir))
    started = time.monotonic()
    for event in client.stream(path, body):
        elapsed = time.monotonic() - started
        if event.get("event") == "progress":
            click.echo(f"[{elapsed:5.1f} s] {event['message']}")
        elif event.get("event") == "done":
            if event.get("ok"):
                click.echo(f"[{elapsed:5.1f} s] {event['message']}")
                return
            tail = event.get("log_tail") or []
            if tail:
                click.echo("last lines of the engine's log:", err=True)
                for line in tail[-10:]:
                    click.echo(f"  {line}", err=True)
            raise ControlRefused(str(event.get("error")))
    raise ControlRefused("the daemon ended the request without an outcome (see its log)")


def _timeout_option(f: Any) -> Any:
    return click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
                        default=None, help="Give up (and roll back) after this many seconds.")(f)


@click.command()
@config_dir_option
@click.argument("name")
@_timeout_option
@click.option("--evict-ollama", is_flag=True,
              help="Unload Ollama models if that is what it takes to fit (whatever the policy).")
@click.pass_context
def start(ctx: click.Context, config_dir: str | None, name: str, timeout_s: float | None,
          evict_ollama: bool) -> None:
    """Start NAME (a provider, served model or alias) and wait until it serves."""
    run_operation(ctx, config_dir, "/v1/control/start",
                  {"name": name, "timeout_s": timeout_s, "evict_ollama": evict_ollama})


@click.command()
@config_dir_option
@click.argument("name")
@click.pass_context
def stop(ctx: click.Context, config_dir: str | None, name: str) -> None:
    """Drain NAME (the router skips it at once), stop it and wait for its GPU memory."""
    run_operation(ctx, config_dir, "/v1/control/stop", {"name": name})


@click.command()
@config_dir_option
@click.argument("name")
@_timeout_option
@click.pass_context
def restart(ctx: click.Context, config_dir: str | None, name: str, timeout_s: float | None) -> None:
    """Stop NAME and start it again (re-planned on what is free now)."""
    run_operation(ctx, config_dir, "/v1/control/restart", {"name": name, "timeout_s": timeout_s})


@click.command()
@config_dir_option
@click.argument("name")
@click.pass_context
def sleep(ctx: click.Context, config_dir: str | None, name: str) -> None:
    """Put NAME to sleep (vLLM sleep mode: weights to host RAM, the card freed but for its
    CUDA context); `gpumgr wake NAME` brings it back in seconds."""
    run_operation(ctx, config_dir, "/v1/control/sleep", {"name": name})


@click.command()
@config_dir_option
@click.argument("name")
@click.pass_context
def wake(ctx: click.Context, config_dir: str | None, name: str) -> None:
    """Wake NAME from sleep and check it with a 1-token request before it counts as up."""
    run_operation(ctx, config_dir, "/v1/control/wake", {"name": name})


@click.command()
@config_dir_option
@click.argument("old")
@click.argument("new")
@_timeout_option
@click.pass_context
def swap(ctx: click.Context, config_dir: str | None, old: str, new: str,
         timeout_s: float | None) -> None:
    """Replace OLD by NEW with no failed requests: refused before anything stops when NEW cannot
    fit; rolled back to OLD when NEW fails."""
    if old == new:  # names that differ but mean one provider: the daemon answers 400 (exit 2)
        raise InputError(f"swap {old} {new}: OLD and NEW are the same; name two providers")
    run_operation(ctx, config_dir, "/v1/control/swap",
                  {"old": old, "new": new, "timeout_s": timeout_s})


@click.command()
@config_dir_option
@click.pass_context
def reload(ctx: click.Context, config_dir: str | None) -> None:
    """Re-read the configuration and apply it (what `systemctl reload gpumgr` does)."""
    report = ControlClient(socket_path(ctx, config_dir)).post("/v1/control/reload")
    warnings = report.pop("warnings", None) or []
    parts = [f"{k}: {', '.join(v)}" for k, v in report.items() if isinstance(v, list) and v]
    click.echo("reloaded" + (f" ({'; '.join(parts)})" if parts else ": nothing to change"))
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


@click.command()
@config_dir_option
@click.argument("name")
@click.option("-n", "lines", type=click.IntRange(0, 10000), default=50, show_default=True,
              help="How many of the last lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.pass_context
def logs(ctx: click.Context, config_dir: str | None, name: str, lines: int, follow: bool) -> None:
    """The log of NAME's engine (secrets masked). Only the engines gpumgr runs have one here:
    NAME is an Ollama, cloud or other backend gpumgr does not run → one line, exit 2; an
    engine that has written nothing yet → one line, exit 1."""
    client = ControlClient(socket_path(ctx, config_dir))
    shown = 0
    try:
        for line in client.lines(f"/v1/control/logs/{name}", {"n": lines, "follow": follow}):
            click.echo(line)
            shown += 1
    except KeyboardInterrupt:
        sys.exit(0)
    if shown == 0 and lines > 0:
        raise NoLogYet(f"{name} has no log yet: gpumgr has not run its engine on this host "
                       f"(`gpumgr start {name}` starts it)")


__all__ = ["logs", "reload", "restart", "sleep", "start", "stop", "swap", "wake"]
