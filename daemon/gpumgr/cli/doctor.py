"""``gpumgr doctor [--json]``: what is wrong with this box, each finding with its fix.

Exit status: 0 when no check fails (warnings allowed), 1 when one does. ``--json`` prints the
report only: ``{"ok", "counts", "duration_s", "checks": [{"name", "status", "summary", "fix"}]}``.
"""

from __future__ import annotations

import os

import click
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.text import Text

from gpumgr.cli.common import config_dir_option, emit_json
from gpumgr.cli.tables import Column, build_table, cell_width, choose_columns, console_for_output
from gpumgr.doctor import Level, Report
from gpumgr.doctor.runner import DoctorOptions, run_doctor
from gpumgr.errors import EXIT_OK, EXIT_RUNTIME
from gpumgr.logs import redact_text

_STYLE = {Level.OK: "green", Level.WARN: "yellow", Level.FAIL: "bold red"}


DOCTOR_COLUMNS = [
    Column("status", keep=True),
    Column("check", keep=True),
    Column("finding", flexible=True, min_width=20),
    Column("fix", flexible=True, min_width=20),
]


def render_report(report: Report, console: Console) -> None:
    """A table of the checks laid out for the console's width; where the check names leave too
    little room, each check on its own line with its finding and fix wrapped under it."""
    rows = [[f"[{_STYLE[c.level]}]{c.level.value}[/]", escape(c.name),
             escape(redact_text(c.summary)), escape(redact_text(c.fix))] for c in report.checks]
    chosen = choose_columns(DOCTOR_COLUMNS, rows, console.width)
    if chosen is not None:
        console.print(build_table(DOCTOR_COLUMNS, rows, chosen, title="gpumgr doctor"))
    else:
        console.print("[bold]gpumgr doctor[/]")
        for status, name, finding, fix in rows:
            line = Text.from_markup(status) + " " * (5 - cell_width(status)) + Text.from_markup(name)
            line.no_wrap = True
            console.print(line)
            console.print(Padding(Text.from_markup(finding, overflow="fold"), (0, 0, 0, 5)))
            if fix:
                console.print(Padding(Text.from_markup(f"fix: {fix}", overflow="fold"),
                                      (0, 0, 0, 5)))
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
        render_report(report, console_for_output())
    ctx.exit(EXIT_RUNTIME if report.failed else EXIT_OK)
