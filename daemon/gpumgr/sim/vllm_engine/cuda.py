"""``GPUMGR_SIM_CUDA=1``: the simulated engine holds real memory on a real card, through PyTorch.

Stands in for the simulated GPU's state file (``gpumgr.sim.gpu.SimGpuState``) with the same
three calls, so the engine code is unchanged:

- ``read()``: the card as CUDA sees it: ``torch.cuda.mem_get_info()`` (free, total), which is
  what vLLM itself reads (total = NVML total − the driver's reserved memory). This process's
  own share is listed as its allocation; everything else used shows as held by others.
- ``allocate(pid, uuid, used_mib, name)``: hold ``used_mib`` minus the engine's nominal context
  in real ``torch.uint8`` tensors (chunks of 256 MiB), growing or shrinking to it. The CUDA
  context itself is real and made on first use; NVML's per-process figure is context + tensors.
- ``release(pid)``: drop every tensor and return the cached blocks to the driver.

So an engine started with ``--gpu-memory-utilization f`` ends up holding its real context plus
``f × total`` (DESIGN.md §3), refuses to start when real free memory is short, and frees it on
SIGTERM. Used by ``scripts/gpu-selfcheck.sh`` with the real NVML daemon; no model weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpumgr.sim.gpu import SimAllocation, SimGpuSpec, SimGpuState, SimSnapshot

CUDA_ENV = "GPUMGR_SIM_CUDA"
MIB = 1024 * 1024
CHUNK_MIB = 256


class CudaUnavailable(RuntimeError):
    """``GPUMGR_SIM_CUDA=1`` but torch with a usable CUDA device is not importable."""


def cuda_requested(env: Mapping[str, str]) -> bool:
    return env.get(CUDA_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class CudaGpuState(SimGpuState):
    """The real card (CUDA device 0, i.e. the first of ``CUDA_VISIBLE_DEVICES``) behind the
    simulated GPU's interface."""

    def __init__(self, torch: Any, uuid: str, context_mib: int) -> None:
        super().__init__(Path(os.devnull))
        self._torch = torch
        self._uuid = uuid
        self._context_mib = context_mib
        self._chunks: list[Any] = []
        self._pid = os.getpid()
        torch.zeros(1, device="cuda")  # the CUDA context, now
        props = torch.cuda.get_device_properties(0)
        self._name = str(props.name)
        self._cc = f"{props.major}.{props.minor}"

    @classmethod
    def from_env(cls) -> SimGpuState | None:  # noqa: D102 - see module doc
        return None

    @property
    def tensor_mib(self) -> int:
        return len(self._chunks) * CHUNK_MIB

    def read(self) -> SimSnapshot:
        free, total = (int(x) for x in self._torch.cuda.mem_get_info())
        total_mib = total // MIB
        free_mib = free // MIB
        ours = self._context_mib + self.tensor_mib
        spec = SimGpuSpec(index=0, uuid=self._uuid, name=self._name, memory_total_mib=total_mib,
                          display_used_mib=max(0, total_mib - free_mib - ours),
                          compute_capability=self._cc)
        alloc = SimAllocation(self._pid, self._uuid, ours, "VLLM::EngineCore", 0.0)
        return SimSnapshot((spec,), (alloc,))

    def allocate(self, pid: int, gpu_uuid: str, used_mib: int, process_name: str) -> SimSnapshot:
        want = max(0, used_mib - self._context_mib)
        chunks = -(-want // CHUNK_MIB)
        while len(self._chunks) > chunks:
            self._chunks.pop()
        if len(self._chunks) < chunks:
            while len(self._chunks) < chunks:
                self._chunks.append(
                    self._torch.empty(CHUNK_MIB * MIB, dtype=self._torch.uint8, device="cuda"))
        else:
            self._torch.cuda.empty_cache()
        self._torch.cuda.synchronize()
        return self.read()

    def release(self, pid: int) -> None:
        self._chunks.clear()
        self._torch.cuda.empty_cache()


def cuda_state_from_env(env: Mapping[str, str], context_mib: int) -> CudaGpuState | None:
    """The real-card state when ``GPUMGR_SIM_CUDA=1``; None otherwise.

    Raises ``CudaUnavailable`` when asked for but torch or CUDA is missing.
    """
    if not cuda_requested(env):
        return None
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise CudaUnavailable(f"{CUDA_ENV}=1 but torch is not importable ({exc})") from None
    if not torch.cuda.is_available():
        raise CudaUnavailable(f"{CUDA_ENV}=1 but torch sees no CUDA device")
    visible = env.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return CudaGpuState(torch, visible or "GPU-cuda-0", context_mib)
