"""``gpumgr daemon``: run the model lifecycle daemon in the foreground (systemd runs it so)."""

from __future__ import annotations

import sys

import click

from gpumgr.cli.common import config_dir_option, load_config_from_ctx
from gpumgr.logs import configure_logging


@click.command("daemon")
@config_dir_option
@click.option(
    "--simulate",
    is_flag=True,
    help="Use the simulated GPU, vLLM engine and hub (also: GPUMGR_SIMULATE=1).",
)
@click.option("--log-level", default="info", show_default=True, help="Log level of the daemon.")
@click.pass_context
def daemon(ctx: click.Context, config_dir: str | None, simulate: bool, log_level: str) -> None:
    """Start the active vLLM providers, keep them alive, stop them all on SIGTERM."""
    from gpumgr.daemon import run_daemon
    from gpumgr.runtime import RuntimeEnv

    configure_logging(log_level, stream=sys.stderr)
    runtime = RuntimeEnv.from_process()  # the daemon's one read of its environment
    config = load_config_from_ctx(ctx, config_dir, simulate=simulate, env=runtime.environ)
    ctx.exit(run_daemon(config, runtime=runtime))
