"""What every command shares: the ``--config-dir`` option, loading the config, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from gpumgr.config import Config, load_config

F = TypeVar("F", bound=Callable[..., Any])


def config_dir_option(f: F) -> F:
    """``--config-dir DIR``, accepted on the group and on each command (the command's wins)."""
    return click.option(
        "--config-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Directory with providers.yaml, model-mappings.yaml, gpumgr.yaml "
        "(default: $GPUMGR_CONFIG_DIR, /etc/gpumgr, ./config).",
    )(f)


def load_config_from_ctx(ctx: click.Context, config_dir: str | None = None, *, simulate: bool = False,
                         env: Mapping[str, str] | None = None) -> Config:
    """``env``: the daemon's ``RuntimeEnv.environ`` (other commands read the process's)."""
    root = ctx.find_root()
    chosen = config_dir or (root.obj or {}).get("config_dir")
    return load_config(chosen, simulate=simulate, env=env)


def emit_json(data: Any) -> None:
    """Print ``data`` as the only thing on stdout."""
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
