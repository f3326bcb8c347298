"""``gpumgr validate [--strict] [--json]``: check the configuration, print every problem.

Errors print as ``file:line:col: key.path: message`` on stderr and exit 2; warnings print as
``file:line:col: warning: key.path: message`` and exit 0, unless ``--strict`` makes them fatal
(exit 2). ``--json`` prints one document with both lists on stdout and nothing else there.
"""

from __future__ import annotations

from typing import Any

import click

from gpumgr.cli.common import config_dir_option, emit_json
from gpumgr.config import ConfigReport, inspect_config
from gpumgr.errors import EXIT_INPUT, ConfigIssue
from gpumgr.logs import redact_text


def warning_line(issue: ConfigIssue) -> str:
    """``providers.yaml:12:5: warning: providers.x.max_model_lenn: …`` (compiler style)."""
    where = issue.file
    if issue.line is not None:
        where += f":{issue.line}"
        if issue.column is not None:
            where += f":{issue.column}"
    body = f"{issue.path}: {issue.message}" if issue.path else issue.message
    return f"{where}: warning: {body}"


def report_json(report: ConfigReport, *, strict: bool) -> dict[str, Any]:
    ok = not report.errors and not (strict and report.warnings)
    doc: dict[str, Any] = {
        "ok": ok,
        "errors": [str(i) for i in report.errors],
        "warnings": [str(i) for i in report.warnings],
    }
    cfg = report.config
    if cfg is not None:
        doc.update(
            {
                "config_dir": str(cfg.config_dir),
                "providers": len(cfg.providers),
                "vllm_providers": len(cfg.vllm_providers),
                "summary": cfg.summary(),
            }
        )
    return doc


@click.command("validate")
@config_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print errors and warnings as JSON.")
@click.option("--strict", is_flag=True, help="Exit 2 on warnings too.")
@click.pass_context
def validate(ctx: click.Context, config_dir: str | None, as_json: bool, strict: bool) -> None:
    """Check providers.yaml, model-mappings.yaml and gpumgr.yaml; print every problem."""
    root = ctx.find_root()
    report = inspect_config(config_dir or (root.obj or {}).get("config_dir"))
    failed = bool(report.errors) or (strict and bool(report.warnings))
    if as_json:
        emit_json(report_json(report, strict=strict))
    else:
        for issue in report.errors:
            click.echo(redact_text(str(issue)), err=True)
        for issue in report.warnings:
            click.echo(redact_text(warning_line(issue)), err=True)
        if report.config is not None:
            click.echo(report.config.summary())
    if failed:
        ctx.exit(EXIT_INPUT)
