"""``gpumgr demo``: run the daemon on a simulated GPU and watch models come up."""

from __future__ import annotations

from pathlib import Path

import click

from gpumgr.cli.common import config_dir_option, load_config_from_ctx
from gpumgr.cli.tables import console_for_output


@click.command("demo")
@config_dir_option
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the demo's config, logs and state here (default: a new temp directory).")
@click.option("--load-seconds", type=float, default=3.0, show_default=True,
              help="How long each simulated vLLM engine takes to load.")
@click.option("--follow", is_flag=True,
              help="After the swaps, keep the daemon running and the table live until Ctrl-C "
                   "(the CLI reaches it with the GPUMGR_CONFIG_DIR it prints).")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
              help="Give up waiting for the backends to settle after this many seconds.")
@click.pass_context
def demo(ctx: click.Context, config_dir: str | None, workdir: Path | None, load_seconds: float,
         follow: bool, timeout_s: float) -> None:
    """Start the example configuration on a simulated GPU, show its status, then stop it
    (with --follow: when you press Ctrl-C)."""
    from gpumgr.demo import run_demo

    cfg = load_config_from_ctx(ctx, config_dir)  # validates the example before copying it
    console = console_for_output()
    ctx.exit(run_demo(cfg.config_dir, workdir=workdir, load_seconds=load_seconds, follow=follow,
                      timeout_s=timeout_s, console=console))
