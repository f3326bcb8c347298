"""``gpumgr doctor [--json]``: what is wrong with this box, each finding with its fix.

Exit status: 0 when no check fails (warnings allowed), 1 when one does. ``--json`` prints the
report only: ``{"ok", "counts", "duration_s", "checks": [{"name", "status", "summary", "fix"}]}``.
"""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console
from rich.table import Table

from gpumgr.cli.common import config_dir_option, emit_json
from gpumgr.doctor import Level, Report
from gpumgr.doctor.runner import DoctorOptions, run_doctor
from gpumgr.errors import EXIT_OK, EXIT_RUNTIME
from gpumgr.logs import redact_text

_STYLE = {Level.OK: "green", Level.WARN: "yellow", Level.FAIL: "bold red"}


def render_report(report: Report, console: Console) -> None:
    table = Table(title="gpumgr doctor", show_lines=False)
    for col in ("status", "check", "finding", "fix"):
        table.add_column(col, overflow="fold")
    for c in report.checks:
        table.add_row(f"[{_STYLE[c.level]}]{c.level.value}[/]", c.name, redact_text(c.summary),
                      redact_text(c.fix))
    console.print(table)
    console.print(f"{report.count(Level.OK)} ok, {report.count(Level.WARN)} warn, "
                  f"{report.count(Level.FAIL)} fail in {report.duration_s:.1f} s")


@click.command("doctor")
@config_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--litellm-config", type=click.Path(dir_okay=False), default=None,
              help="The LiteLLM proxy's config.yaml (default: $LITELLM_CONFIG).")
@click.pass_context
def doctor(ctx: click.Context, config_dir: str | None, as_json: bool,
           litellm_config: str | None) -> None:
    """Check the host, the configuration and every service gpumgr uses (exit 1 if one fails)."""
    root = ctx.find_root()
    chosen = config_dir or (root.obj or {}).get("config_dir")
    report = run_doctor(DoctorOptions(config_dir=chosen, litellm_config=litellm_config,
                                      env=dict(os.environ)))
    if as_json:
        emit_json(report.to_dict())
    else:
        render_report(report, Console(width=None if sys.stdout.isatty() else 160))
    ctx.exit(EXIT_RUNTIME if report.failed else EXIT_OK)
