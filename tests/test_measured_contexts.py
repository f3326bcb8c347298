"""The CUDA context engines really take on a card is remembered per card and raises (never
lowers) the context the next plan on that card uses."""

from __future__ import annotations

from pathlib import Path

from gpumgr.config.settings import PlannerSettings
from gpumgr.gpu import GpuInfo
from gpumgr.gpu.contexts import MeasuredContexts, engine_context_bytes
from gpumgr.plan import PlannerConstants

MIB = 1 << 20
CARD = GpuInfo(index=0, uuid="GPU-a", name="NVIDIA H200", memory_total_bytes=143771 * MIB,
               memory_used_bytes=0, memory_free_bytes=143771 * MIB,
               memory_reserved_bytes=615 * MIB, compute_capability="9.0")  # fmt: skip
CUDA_TOTAL = (143771 - 615) * MIB


def test_an_engines_context_is_what_nvml_shows_beyond_its_budget() -> None:
    import math

    budget = math.ceil(0.07 * CUDA_TOTAL)
    assert engine_context_bytes(budget + 829 * MIB, 0.07, CUDA_TOTAL) == 829 * MIB
    assert engine_context_bytes(budget - MIB, 0.07, CUDA_TOTAL) is None  # shrunk KV: no reading
    assert engine_context_bytes(budget + 9000 * MIB, 0.07, CUDA_TOTAL) is None  # implausible


def test_the_largest_context_per_card_is_kept_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cuda-contexts.json"
    store = MeasuredContexts(path)
    used = int(0.07 * CUDA_TOTAL) + 1
    assert store.record(CARD, [(used + 614 * MIB, 0.07), (used + 829 * MIB, 0.07)]) == 829 * MIB
    assert MeasuredContexts(path).record(CARD, [(used + 700 * MIB, 0.07)]) == 829 * MIB
    assert MeasuredContexts(path).get("GPU-a") == 829 * MIB


def test_the_card_measurement_raises_the_planned_context_but_never_lowers_it() -> None:
    s = PlannerSettings()
    assert PlannerConstants.from_settings(s, "9.0", 829 * MIB).cuda_context_bytes == 829 * MIB
    assert PlannerConstants.from_settings(s, "9.0", 500 * MIB).cuda_context_bytes == 710 * MIB
    assert PlannerConstants.from_settings(s, "7.5", 500 * MIB).cuda_context_bytes == 512 * MIB
    pinned = PlannerSettings(cuda_context_mib=600)
    assert PlannerConstants.from_settings(pinned, "9.0", 829 * MIB).cuda_context_bytes == 600 * MIB
