"""Tables that stay readable at any width: the name and the state are never cut.

Every table of the CLI (``status``, ``plan``, ``gpus``, ``doctor``, the demo's live view) is
built here from column descriptions, for the width it has. Columns come in three kinds:

- *kept* (the name, the state): always shown, never wrapped or shortened;
- *flexible* (the detail, a finding, a fix): takes the width that is left and wraps there;
- *optional* (type, port, uuid, KV MiB…): shown, most important first, while they fit.

When even the kept columns and a readable flexible column do not fit side by side,
``choose_columns`` says so (``None``) and the caller stacks the flexible text under each row.
Rich would otherwise shrink every column evenly, the name included.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

Justify = Literal["left", "right", "center"]

CELL_GAP = 3
"""Columns of a borderless rich table (``show_edge=False``, ``pad_edge=False``) are separated
by one space of padding, a rule and one space of padding."""

PIPED_DEFAULT_WIDTH = 120
"""The width of output that is not a terminal when ``COLUMNS`` does not say."""


@dataclass(frozen=True)
class Column:
    header: str
    keep: bool = False
    """A name or a state: always shown, whole."""
    flexible: bool = False
    """The detail: takes what is left, folds to fit, never narrower than ``min_width``."""
    priority: int = 0
    """Optional columns: the higher, the longer it stays as the width shrinks."""
    justify: Justify = "left"
    max_width: int | None = None
    """An optional column shortened with an ellipsis past this width."""
    min_width: int = 24
    comfortable_width: int = 40
    """A flexible column keeps this much (or all it needs) before optional columns are added."""


def output_width(stream_is_tty: bool | None = None, env: dict[str, str] | None = None) -> int | None:
    """The width to render for: None on a terminal (rich asks it, and follows resizes), else
    ``$COLUMNS`` when it is a number, else ``PIPED_DEFAULT_WIDTH``."""
    tty = sys.stdout.isatty() if stream_is_tty is None else stream_is_tty
    if tty:
        return None
    raw = (os.environ if env is None else env).get("COLUMNS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return PIPED_DEFAULT_WIDTH


def console_for_output() -> Console:
    """A console on stdout of the width ``output_width`` chooses."""
    return Console(width=output_width())


def cell_width(markup: str) -> int:
    """The widest line of a cell, in terminal cells, markup excluded."""
    return max((Text.from_markup(line).cell_len for line in markup.split("\n")), default=0)


def natural_widths(columns: list[Column], rows: list[list[str]]) -> list[int]:
    """What each column needs to show every cell on one line (capped at ``max_width``)."""
    out = []
    for i, col in enumerate(columns):
        widest = max([len(col.header)] + [cell_width(r[i]) for r in rows])
        if col.max_width is not None:
            widest = max(len(col.header), min(widest, col.max_width))
        out.append(widest)
    return out


def choose_columns(columns: list[Column], rows: list[list[str]], width: int) -> list[int] | None:
    """The indices of the columns to show at ``width`` (in their order), or None when the kept
    columns and the flexible ones at their minimum do not fit side by side."""
    natural = natural_widths(columns, rows)

    def need(idx: list[int], flexible_at: str) -> int:
        cells = [min(getattr(columns[i], flexible_at), natural[i]) if columns[i].flexible
                 else natural[i] for i in idx]
        return sum(cells) + CELL_GAP * (len(idx) - 1)

    chosen = [i for i, c in enumerate(columns) if c.keep or c.flexible]
    if need(chosen, "min_width") > width:
        return None
    optional = sorted((i for i, c in enumerate(columns) if not (c.keep or c.flexible)),
                      key=lambda i: -columns[i].priority)
    for i in optional:
        if need(sorted(chosen + [i]), "comfortable_width") <= width:
            chosen = sorted(chosen + [i])
    return chosen


def build_table(columns: list[Column], rows: list[list[str]], chosen: list[int], *,
                title: str | None = None) -> Table:
    """A borderless table of the ``chosen`` columns: kept and optional ones at their natural
    width (optional ones shortened with an ellipsis past ``max_width``), flexible ones folded."""
    natural = natural_widths(columns, rows)
    table = Table(show_edge=False, header_style="bold", pad_edge=False, title=title)
    for i in chosen:
        col = columns[i]
        if col.flexible:
            table.add_column(col.header, overflow="fold",
                             min_width=min(col.min_width, natural[i]), justify=col.justify)
        elif col.max_width is not None and not col.keep:
            table.add_column(col.header, no_wrap=True, overflow="ellipsis",
                             max_width=natural[i], justify=col.justify)
        else:
            table.add_column(col.header, no_wrap=True, min_width=natural[i], justify=col.justify)
    for row in rows:
        table.add_row(*(row[i] for i in chosen))
    return table


def fit_table(columns: list[Column], rows: list[list[str]], width: int, *,
              title: str | None = None) -> Table:
    """The columns that fit ``width`` (``choose_columns``); where not even the kept ones fit,
    those alone (the terminal then wraps: better than a cut name)."""
    chosen = choose_columns(columns, rows, width)
    if chosen is None:
        chosen = [i for i, c in enumerate(columns) if c.keep or c.flexible]
    return build_table(columns, rows, chosen, title=title)
