"""The planner's CUDA context and total come from measurement: the context recorded for the
card's compute capability (H200, cc 9.0: 710 MiB with cuBLAS), and CUDA's total (NVML total less
the driver-reserved memory), which is what vLLM multiplies its fraction by."""

from __future__ import annotations

from gpumgr.config.settings import PlannerSettings
from gpumgr.gpu import GpuInfo
from gpumgr.plan import PlannerConstants, request_for_gpu
from gpumgr.plan.cuda_contexts import ROWS, measured_context_bytes, parse_rows

MIB = 1024 * 1024
H200 = GpuInfo(index=0, uuid="GPU-h200", name="NVIDIA H200", memory_total_bytes=150754820096,
               memory_used_bytes=0, memory_free_bytes=150109880320,
               memory_reserved_bytes=644939776, compute_capability="9.0")  # fmt: skip


def test_the_h200_row_is_the_first_recorded_context() -> None:
    row = next(r for r in ROWS if r.compute_capability == "9.0")
    assert (row.bare_mib, row.cublas_mib, row.reserved_mib) == (612, 710, 615)


def test_the_context_follows_the_cards_compute_capability_unless_configured() -> None:
    s = PlannerSettings()
    assert PlannerConstants.from_settings(s, "9.0").cuda_context_bytes == 710 * MIB
    assert PlannerConstants.from_settings(s, "7.5").cuda_context_bytes == 512 * MIB  # no row yet
    assert PlannerConstants.from_settings(s).cuda_context_bytes == 512 * MIB
    pinned = PlannerSettings(cuda_context_mib=1024)
    assert PlannerConstants.from_settings(pinned, "9.0").cuda_context_bytes == 1024 * MIB


def test_a_new_selfcheck_row_is_read_and_the_largest_context_wins() -> None:
    rows = parse_rows("compute_capability\tgpu_name\tdriver\tbare_mib\tcublas_mib\treserved_mib\t"
                      "source\n7.5\tQuadro RTX 5000\t580.1\t300\t420\t\tselfcheck\n"
                      "7.5\tQuadro RTX 8000\t580.1\t310\t440\t250\tselfcheck\n")  # fmt: skip
    assert measured_context_bytes("7.5", rows) == 440 * MIB
    assert measured_context_bytes("8.6", rows) is None


def test_fractions_are_computed_against_cudas_total_not_nvmls() -> None:
    request = request_for_gpu(H200, [], reserve_bytes=0)
    assert request.total_bytes == 150754820096 - 644939776
