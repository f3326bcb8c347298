"""What every benchmark here reports the same way: where its JSON goes, the header saying when
and on what it was measured, a two-column table, and writing the result."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def results_path(benchmark: str) -> Path:
    """``bench/results/<benchmark>.json``."""
    return RESULTS_DIR / f"{benchmark}.json"


def header(benchmark: str) -> dict[str, Any]:
    """The first keys of every result: the benchmark's name, when and on what machine."""
    return {
        "benchmark": benchmark,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }


def print_rows(rows: Iterable[tuple[str, object]], indent: str = "") -> None:
    """``key  value`` lines, the keys padded to the longest."""
    rows = list(rows)
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{indent}{key:<{width}}  {value}")


def write_result(result: dict[str, Any], out: Path) -> None:
    """The result as indented JSON at ``out`` (its folder created), and a line saying so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
