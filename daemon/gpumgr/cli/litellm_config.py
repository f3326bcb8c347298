"""``gpumgr litellm-config [--config-dir D] [--merge EXISTING] [--output FILE]``: a LiteLLM proxy
config from the registry, on stdout or written atomically to FILE (same inputs, same bytes).

``--merge EXISTING`` starts from the operator's own config and changes only its model list,
fallbacks and callbacks (integrations/litellm_merge.py); what changed is printed on stderr when
the config goes to stdout, on stdout when it goes to a file."""

from __future__ import annotations

import sys
from pathlib import Path

from typing import Any

import click
import yaml

from gpumgr.cli.common import config_dir_option, load_config_from_ctx
from gpumgr.config import MAPPINGS_FILE
from gpumgr.errors import GpumgrError, InputError
from gpumgr.fsio import write_atomic
from gpumgr.integrations.litellm_config import (
    DEFAULT_REQUEST_TIMEOUT_S,
    litellm_config as build,
    dump_yaml,
    notes_block,
    pinned_note,
    render_yaml,
)
from gpumgr.integrations.litellm_merge import MERGE_HEADER, merge


@click.command("litellm-config")
@config_dir_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the config to FILE (atomically) instead of stdout.")
@click.option("--merge", "merge_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Update this existing LiteLLM config instead of writing a new "
              "one: its model_list, fallbacks and callbacks; every other setting kept.")
@click.option("--request-timeout", type=click.IntRange(min=1), default=DEFAULT_REQUEST_TIMEOUT_S,
              show_default=True, help="LiteLLM's request_timeout and router timeout, seconds.")
@click.pass_context
def litellm_config(
    ctx: click.Context,
    config_dir: str | None,
    output: Path | None,
    merge_path: Path | None,
    request_timeout: int,
) -> None:
    """Print a LiteLLM proxy config for providers.yaml + model-mappings.yaml."""
    cfg = load_config_from_ctx(ctx, config_dir)
    notes = [str(w) for w in cfg.warnings if w.file == MAPPINGS_FILE]
    generated = build(cfg.providers_file, cfg.mappings, request_timeout_s=request_timeout)
    summary: list[str] = []
    if merge_path is None:
        data = render_yaml(generated, notes)
    else:
        merged, summary = merge(read_existing(merge_path), generated)
        data = (MERGE_HEADER + notes_block(notes) + pinned_note(merged) + dump_yaml(merged)).encode()
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        for line in summary:
            click.echo(line, err=True)
        return
    try:
        write_atomic(output, data)
    except OSError as exc:
        raise GpumgrError(f"cannot write {output}: {exc.strerror or exc}") from None
    for line in summary:
        click.echo(line)
    click.echo(f"wrote {output} ({len(data)} bytes)", err=True)


def read_existing(path: Path) -> dict[str, Any]:
    """The operator's LiteLLM config as a mapping; a one-line InputError otherwise."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(f"--merge {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise InputError(f"--merge {path}{where}: not YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"--merge {path}: top level must be a mapping (a LiteLLM config)")
    return data
