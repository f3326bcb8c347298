"""CUDA contexts measured on this host's cards, remembered in the state_dir.

Once an engine serves with its whole budget on a card, NVML's figure for its process less the
budget (``ceil(fraction × CUDA total)``) is the context it really took: real vLLM's is larger
than a bare torch context (NCCL, its kernels, its workers; 614-829 MiB on an H200 against 710
for torch with cuBLAS). The largest one seen per card (by UUID) is kept in
``<state_dir>/cuda-contexts.json`` and the planner plans with it when it is larger than the
recorded row for the card's compute capability; it never plans a smaller context than that row
(a refinement that could only shrink slices below what a start needs is no refinement).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

from gpumgr.fsio import write_atomic
from gpumgr.gpu import GpuInfo

MIB = 1 << 20
CACHE_FILE = "cuda-contexts.json"
PLAUSIBLE_MAX_BYTES = 4 << 30
"""A larger "context" is a mis-attribution (an engine that grew past its budget), not a context."""


def engine_context_bytes(process_used_bytes: int, fraction: float, cuda_total_bytes: int) -> int | None:
    """What an engine holds beyond its budget, or None when that is not a plausible context."""
    ctx = process_used_bytes - math.ceil(fraction * cuda_total_bytes)
    return ctx if 0 < ctx <= PLAUSIBLE_MAX_BYTES else None


class MeasuredContexts:
    """The largest context seen per card UUID (bytes), read and written as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: int(v["context_mib"]) * MIB for k, v in data.items()
                if isinstance(v, dict) and isinstance(v.get("context_mib"), int)}

    def get(self, uuid: str) -> int | None:
        return self.load().get(uuid)

    def record(self, gpu: GpuInfo, engines: Iterable[tuple[int, float]]) -> int | None:
        """Note the contexts of ``engines`` ((process used bytes, fraction)) on ``gpu``; the
        card's largest so far (None when none is known)."""
        total = gpu.memory_total_bytes - (gpu.memory_reserved_bytes or 0)
        seen = [c for used, f in engines if (c := engine_context_bytes(used, f, total))]
        known = self.get(gpu.uuid)
        if not seen or (known is not None and max(seen) <= known):
            return known
        best = max(seen)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        except (OSError, ValueError):
            data = {}
        data[gpu.uuid] = {"context_mib": -(-best // MIB), "name": gpu.name,
                          "compute_capability": gpu.compute_capability}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        except OSError:
            pass
        return best
