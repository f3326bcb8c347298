"""The CUDA context one process takes, by compute capability, as measured on real cards.

The context sits outside vLLM's budget (DESIGN.md §3), so planning it too small makes a start
fail. The rows come from ``scripts/gpu-selfcheck.sh`` runs (``cuda_contexts.tsv`` beside this
module: one line per card: compute capability, name, driver, the bare torch context, the context
with a cuBLAS handle, NVML's reserved memory). The planner uses the cuBLAS figure (vLLM creates
cuBLAS handles) of the card's compute capability; a capability with no row keeps the default
constant, and ``planner.cuda_context_mib`` overrides both. Read once at import, like the vLLM
tables: package data, not the box's state.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources

MIB = 1024 * 1024


@dataclass(frozen=True)
class ContextRow:
    compute_capability: str
    gpu_name: str
    driver: str
    bare_mib: int
    cublas_mib: int
    reserved_mib: int | None
    source: str


def parse_rows(text: str) -> tuple[ContextRow, ...]:
    rows = []
    for r in csv.DictReader(io.StringIO(text), delimiter="\t"):
        reserved = (r.get("reserved_mib") or "").strip()
        rows.append(ContextRow(r["compute_capability"].strip(), r["gpu_name"], r["driver"],
                               int(r["bare_mib"]), int(r["cublas_mib"]),
                               int(reserved) if reserved.isdigit() else None,
                               r.get("source") or ""))  # fmt: skip
    return tuple(rows)


ROWS: tuple[ContextRow, ...] = parse_rows(
    resources.files("gpumgr.plan").joinpath("cuda_contexts.tsv").read_text(encoding="utf-8")
)


def measured_context_bytes(
    compute_capability: str | None, rows: tuple[ContextRow, ...] = ROWS
) -> int | None:
    """The largest context with a cuBLAS handle recorded for this compute capability."""
    if not compute_capability:
        return None
    found = [r.cublas_mib for r in rows if r.compute_capability == compute_capability.strip()]
    return max(found) * MIB if found else None
