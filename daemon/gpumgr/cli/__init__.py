"""``gpumgr …``: the command-line interface (click + rich).

Thin by design: each command lives in its own module and calls the library. Errors are mapped to
one line on stderr and an exit status here, in one place: 0 ok, 1 runtime failure, 2 bad input.
``--json`` commands print only JSON on stdout.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from gpumgr import __version__
from gpumgr.cli.common import config_dir_option
from gpumgr.errors import EXIT_INPUT, EXIT_RUNTIME, ConfigError, GpumgrError
from gpumgr.logs import configure_logging, redact_text


class GpumgrGroup(click.Group):
    """A group that turns gpumgr's errors into one line and an exit status, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            for issue in exc.issues:
                click.echo(redact_text(str(issue)), err=True)
            ctx.exit(exc.exit_code)
        except GpumgrError as exc:
            click.echo(f"error: {redact_text(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=GpumgrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpumgr")
@config_dir_option
@click.option("--log-level", default="warning", show_default=True, help="Log level for this command.")
@click.pass_context
def main(ctx: click.Context, config_dir: str | None, log_level: str) -> None:
    """gpumgr: the model lifecycle daemon of a GPU host."""
    ctx.ensure_object(dict)
    ctx.obj["config_dir"] = config_dir
    configure_logging(log_level)


# Commands that live in their own modules; a module that is not there yet is skipped.
_COMMANDS = {
    "validate": "gpumgr.cli.validate",
    "gpus": "gpumgr.cli.gpus",
    "plan": "gpumgr.cli.plan",
    "pull": "gpumgr.cli.pull",
    "daemon": "gpumgr.cli.daemon",
    "status": "gpumgr.cli.status",
    "start": "gpumgr.cli.control",
    "stop": "gpumgr.cli.control",
    "restart": "gpumgr.cli.control",
    "swap": "gpumgr.cli.control",
    "sleep": "gpumgr.cli.control",
    "wake": "gpumgr.cli.control",
    "reload": "gpumgr.cli.control",
    "logs": "gpumgr.cli.control",
    "demo": "gpumgr.cli.demo",
    "doctor": "gpumgr.cli.doctor",
    "litellm-config": "gpumgr.cli.litellm_config",
}
for _name, _module in _COMMANDS.items():
    try:
        _cmd = getattr(importlib.import_module(_module), _name.replace("-", "_"))
    except ModuleNotFoundError as _exc:
        if _exc.name != _module:
            raise
        continue
    main.add_command(_cmd, _name)


def run() -> None:
    """Entry point that never shows a traceback for an unexpected error either."""
    try:
        main(standalone_mode=True)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - last resort: one line, exit 1
        click.echo(f"error: unexpected {type(exc).__name__}: {redact_text(str(exc))}", err=True)
        sys.exit(EXIT_RUNTIME)


__all__ = ["main", "run", "EXIT_INPUT"]
