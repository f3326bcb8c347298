"""The NVML backend against recorded NVML values and raised errors (a fake ``pynvml`` passed in)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pynvml  # type: ignore[import-untyped]
import pytest

from gpumgr.errors import GpuUnavailable
from gpumgr.gpu.nvml import NvmlBackend

MIB = 1 << 20


def _err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class FakeNvml:
    """Values recorded from a Quadro RTX 5000 on driver 580.95.05 with one vLLM running."""

    def __init__(self, **overrides: Any) -> None:
        self.calls: list[str] = []
        self.shutdowns = 0
        self.init_error: int | None = None
        self.v3_error: int | None = None
        self.v2_memory_error: int | None = None
        self.temp_error: int | None = None
        self.util_error: int | None = None
        self.name_value: Any = b"Quadro RTX 5000"
        self.__dict__.update(overrides)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise _err(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.95.05"

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"handle{i}"

    def nvmlDeviceGetUUID(self, h: str) -> bytes:
        return b"GPU-6f1c2a4e-8d3b-11ef-9a7c-0242ac120002"

    def nvmlDeviceGetName(self, h: str) -> Any:
        return self.name_value

    def nvmlDeviceGetMemoryInfo(self, h: str, version: int | None = None) -> SimpleNamespace:
        if version is not None:
            if self.v2_memory_error is not None:
                raise _err(self.v2_memory_error)
            return SimpleNamespace(
                version=version, total=17179869184, reserved=356515840,
                free=7058227200, used=9765126144,
            )
        return SimpleNamespace(total=17179869184, free=7058227200, used=10121641984)

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:
        if self.temp_error is not None:
            raise _err(self.temp_error)
        return 61

    def nvmlDeviceGetUtilizationRates(self, h: str) -> SimpleNamespace:
        if self.util_error is not None:
            raise _err(self.util_error)
        return SimpleNamespace(gpu=37, memory=12)

    def nvmlDeviceGetCudaComputeCapability(self, h: str) -> tuple[int, int]:
        return (7, 5)

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h: str) -> list[SimpleNamespace]:
        self.calls.append("compute_v3")
        if self.v3_error is not None:
            raise _err(self.v3_error)
        return [SimpleNamespace(pid=4242, usedGpuMemory=8598323200, gpuInstanceId=0xFFFFFFFF)]

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: str) -> list[SimpleNamespace]:
        self.calls.append("compute_v2")
        return [SimpleNamespace(pid=4242, usedGpuMemory=8598323200)]

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, h: str) -> list[SimpleNamespace]:
        if self.v3_error is not None:
            raise _err(self.v3_error)
        return [SimpleNamespace(pid=1337, usedGpuMemory=None)]  # WDDM-style "not available"

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, h: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=1337, usedGpuMemory=None)]


def _inspect(pid: int) -> tuple[str, int | None]:
    return {4242: ("python3", 4200), 1337: ("Xorg", 1337)}.get(pid, ("", None))


def test_reads_memory_processes_and_readings_from_nvml() -> None:
    fake = FakeNvml()
    inv = NvmlBackend(fake, _inspect).read()
    assert inv.available and inv.driver_version == "580.95.05"
    (g,) = inv.gpus
    assert (g.uuid, g.name, g.compute_capability) == (
        "GPU-6f1c2a4e-8d3b-11ef-9a7c-0242ac120002", "Quadro RTX 5000", "7.5",
    )
    assert g.memory_total_mib == 16384
    assert g.memory_reserved_bytes == 356515840  # v2 splits out the driver's reservation
    assert g.memory_free_bytes == 7058227200
    assert (g.temperature_c, g.utilization_pct) == (61, 37)
    assert [(p.pid, p.kind, p.name, p.pgid) for p in g.processes] == [
        (4242, "compute", "python3", 4200), (1337, "graphics", "Xorg", 1337),
    ]
    assert g.processes[0].used_mib == 8200
    assert g.processes[1].used_bytes is None
    assert fake.shutdowns == 1


def test_old_driver_falls_back_from_v3_process_call_to_v2() -> None:
    fake = FakeNvml(v3_error=pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    g = NvmlBackend(fake, _inspect).read().gpus[0]
    assert fake.calls == ["compute_v3", "compute_v2"]
    assert g.processes[0].used_bytes == 8598323200


def test_unsupported_readings_are_none_not_failures() -> None:
    fake = FakeNvml(
        temp_error=pynvml.NVML_ERROR_NOT_SUPPORTED,
        util_error=pynvml.NVML_ERROR_NOT_SUPPORTED,
        v2_memory_error=pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        name_value="Quadro RTX 5000",
    )
    inv = NvmlBackend(fake, _inspect).read()
    g = inv.gpus[0]
    assert inv.available
    assert (g.temperature_c, g.utilization_pct, g.memory_reserved_bytes) == (None, None, None)
    assert g.memory_used_bytes == 10121641984  # v1 memory info
    assert g.name == "Quadro RTX 5000"


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver not loaded"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "no permission"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "version mismatch"),
        (pynvml.NVML_ERROR_UNINITIALIZED, "not initialised"),
    ],
)
def test_nvml_init_errors_become_gpu_unavailable(code: int, words: str) -> None:
    inv = NvmlBackend(FakeNvml(init_error=code), _inspect).read()
    assert not inv.available and not inv.gpus
    assert inv.error is not None
    assert inv.error.startswith("GPU unavailable: ") and words in inv.error
    with pytest.raises(GpuUnavailable, match="GPU unavailable"):
        inv.require()


def test_error_in_the_middle_of_a_read_is_reported_and_nvml_shut_down() -> None:
    class LostGpu(FakeNvml):
        def nvmlDeviceGetUUID(self, h: str) -> bytes:
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)

    fake = LostGpu()
    inv = NvmlBackend(fake, _inspect).read()
    assert inv.error is not None and "GPU is lost" in inv.error
    assert fake.shutdowns == 1


def test_real_pynvml_without_a_driver_reports_unavailable() -> None:
    """On this machine (no NVIDIA driver) the real library path must not raise."""
    inv = NvmlBackend().read()
    if inv.available:
        pytest.skip("an NVIDIA driver is present")
    assert inv.error is not None and inv.error.startswith("GPU unavailable: ")


# -- recorded on a real card ---------------------------------------------------------------------
# NVIDIA H200 (compute capability 9.0), driver 580.159.04 (CUDA 13.0), nvidia-ml-py 13.610.43,
# read by scripts/gpu-check.sh on 2026-11-29 (docs/gpu-check.md): idle, then one torch process
# (pid 479) holding its CUDA context, a cuBLAS handle and an 8 GiB allocation.
H200_TOTAL = 150754820096  # 143771 MiB, as nvidia-smi prints it
H200_RESERVED = 644939776  # v2 only; nvidia-smi rounds it to 616 MiB
H200_CUDA_TOTAL_MIB = 143155  # what cudaMemGetInfo (so vLLM) calls total: NVML total - reserved
H200_MEMORY = {
    # stage: (v2 used, free, [(pid, usedGpuMemory)]); v1 used = v2 used + reserved, same free
    "idle": (0, 150109880320, []),
    "alloc": (9343664128, 140766216192, [(479, 9334423552)]),
}


class H200Nvml(FakeNvml):
    """The recorded H200 values; the error switches of ``FakeNvml`` still apply."""

    def __init__(self, stage: str = "alloc", **overrides: Any) -> None:
        super().__init__(**overrides)
        self.stage = stage

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlDeviceGetUUID(self, h: str) -> Any:
        return "GPU-2d3d9486-4ce1-0b89-abc8-58be76664d0c"  # str: nvidia-ml-py decodes (convertStrBytes)

    def nvmlDeviceGetName(self, h: str) -> Any:
        return "NVIDIA H200"  # str, not bytes, likewise

    def nvmlDeviceGetMemoryInfo(self, h: str, version: int | None = None) -> SimpleNamespace:
        used, free, _ = H200_MEMORY[self.stage]
        if version is not None:
            if self.v2_memory_error is not None:
                raise _err(self.v2_memory_error)
            return SimpleNamespace(
                version=version, total=H200_TOTAL, reserved=H200_RESERVED, free=free, used=used
            )
        return SimpleNamespace(total=H200_TOTAL, free=free, used=used + H200_RESERVED)

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:
        return 35

    def nvmlDeviceGetUtilizationRates(self, h: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=0, memory=0)

    def nvmlDeviceGetCudaComputeCapability(self, h: str) -> tuple[int, int]:
        return (9, 0)

    def _compute(self) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(pid=pid, usedGpuMemory=b, gpuInstanceId=0xFFFFFFFF,
                            computeInstanceId=0xFFFFFFFF)
            for pid, b in H200_MEMORY[self.stage][2]
        ]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h: str) -> list[SimpleNamespace]:
        self.calls.append("compute_v3")
        if self.v3_error is not None:
            raise _err(self.v3_error)
        return self._compute()

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: str) -> list[SimpleNamespace]:
        self.calls.append("compute_v2")
        return self._compute()

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, h: str) -> list[SimpleNamespace]:
        return []  # a headless data-centre card

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, h: str) -> list[SimpleNamespace]:
        return []


def _h200_inspect(pid: int) -> tuple[str, int | None]:
    return {479: ("python3", 479)}.get(pid, ("", None))


def test_h200_idle_reads_as_gpus_json_showed_it() -> None:
    inv = NvmlBackend(H200Nvml("idle"), _h200_inspect).read()
    assert inv.available and inv.driver_version == "580.159.04" and inv.warnings == ()
    (g,) = inv.gpus
    assert (g.name, g.compute_capability) == ("NVIDIA H200", "9.0")
    d = g.to_dict()
    assert (d["memory_total_mib"], d["memory_used_mib"], d["memory_free_mib"]) == (143771, 0, 143155)
    assert d["memory_reserved_mib"] == 615
    assert d["processes"] == []
    # used (v2) + reserved + free = total: nothing of the card is counted twice or lost
    assert g.memory_used_bytes + H200_RESERVED + g.memory_free_bytes == g.memory_total_bytes
    # CUDA's total (vLLM's base for --gpu-memory-utilization) is NVML's total less reserved
    assert (g.memory_total_bytes - (g.memory_reserved_bytes or 0)) // MIB == H200_CUDA_TOTAL_MIB


def test_h200_process_holding_context_and_8_gib() -> None:
    inv = NvmlBackend(H200Nvml("alloc"), _h200_inspect).read()
    (g,) = inv.gpus
    d = g.to_dict()
    assert (d["memory_used_mib"], d["memory_free_mib"]) == (8911, 134245)
    assert d["processes"] == [
        {"pid": 479, "used_mib": 8902, "name": "python3", "kind": "compute", "owner": "unknown"}
    ]
    assert g.processes[0].pgid == 479
    # 8192 MiB allocated + 710 MiB context with cuBLAS = what NVML charges the process
    assert g.processes[0].used_mib == 8192 + 710
    # the driver charges the card ~8.8 MiB per context that no process is listed with
    assert g.unattributed_bytes == 9343664128 - 9334423552 == 9240576


def test_h200_v1_fallback_counts_reserved_as_used_but_free_is_the_same() -> None:
    v2 = NvmlBackend(H200Nvml("alloc"), _h200_inspect).read().gpus[0]
    v1 = NvmlBackend(
        H200Nvml("alloc", v2_memory_error=pynvml.NVML_ERROR_FUNCTION_NOT_FOUND), _h200_inspect
    ).read().gpus[0]
    assert v1.memory_reserved_bytes is None
    assert v1.memory_used_bytes == v2.memory_used_bytes + H200_RESERVED
    assert v1.memory_free_bytes == v2.memory_free_bytes  # the planner reads free: unaffected
    assert v1.memory_total_bytes == v2.memory_total_bytes


def test_h200_v2_process_call_gives_the_same_list() -> None:
    fake = H200Nvml("alloc", v3_error=pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    g = NvmlBackend(fake, _h200_inspect).read().gpus[0]
    assert fake.calls == ["compute_v3", "compute_v2"]
    assert [(p.pid, p.used_bytes) for p in g.processes] == [(479, 9334423552)]
