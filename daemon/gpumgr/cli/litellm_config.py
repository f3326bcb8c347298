"""``gpumgr litellm-config [--config-dir D] [--output FILE]``: a LiteLLM proxy config from the
registry, on stdout or written atomically to FILE (same registry, same bytes)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gpumgr.cli.common import config_dir_option, load_config_from_ctx
from gpumgr.errors import GpumgrError
from gpumgr.fsio import write_atomic
from gpumgr.integrations.litellm_config import (
    DEFAULT_REQUEST_TIMEOUT_S,
    litellm_config as build,
    render_yaml,
)


@click.command("litellm-config")
@config_dir_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the config to FILE (atomically) instead of stdout.")
@click.option("--request-timeout", type=click.IntRange(min=1), default=DEFAULT_REQUEST_TIMEOUT_S,
              show_default=True, help="LiteLLM's request_timeout and router timeout, seconds.")
@click.pass_context
def litellm_config(
    ctx: click.Context, config_dir: str | None, output: Path | None, request_timeout: int
) -> None:
    """Print a LiteLLM proxy config for providers.yaml + model-mappings.yaml."""
    cfg = load_config_from_ctx(ctx, config_dir)
    data = render_yaml(build(cfg.providers_file, cfg.mappings, request_timeout_s=request_timeout))
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        write_atomic(output, data)
    except OSError as exc:
        raise GpumgrError(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {output} ({len(data)} bytes)", err=True)
