"""``gpumgr litellm-config [--config-dir D] [--output FILE]``: a LiteLLM proxy config from the
registry, on stdout or written atomically to FILE (same registry, same bytes)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from gpumgr.cli.common import config_dir_option, load_config_from_ctx
from gpumgr.config import MAPPINGS_FILE
from gpumgr.errors import GpumgrError
from gpumgr.integrations.litellm_config import (
    DEFAULT_REQUEST_TIMEOUT_S,
    litellm_config as build,
    render_yaml,
)


def write_atomically(path: Path, data: bytes) -> None:
    """Write next to ``path`` and rename over it: a reader sees the old file or the new one."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    notes = [str(w) for w in cfg.warnings if w.file == MAPPINGS_FILE]
    data = render_yaml(
        build(cfg.providers_file, cfg.mappings, request_timeout_s=request_timeout), notes
    )
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        write_atomically(output, data)
    except OSError as exc:
        raise GpumgrError(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {output} ({len(data)} bytes)", err=True)
