"""Build a ``PlanRequest`` from an attributed GPU snapshot. Pure (no NVML, no HTTP here).

Who holds what decides what the plan may use: memory of the planned providers' own running
instances comes back (the plan describes them restarted); Ollama's and unknown processes' memory
and the display stay taken; other managed backends stay taken but are named as "stop X" fixes.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpumgr.gpu import OWNER_OLLAMA, OWNER_UNKNOWN, GpuInfo
from gpumgr.plan.model import InstanceRequest, MemoryHolder, OllamaModel, PlanRequest


def request_for_gpu(
    gpu: GpuInfo,
    instances: Iterable[InstanceRequest],
    *,
    reserve_bytes: int,
    ollama_models: Iterable[OllamaModel] | None = None,
    ollama_reservation_bytes: int = 0,
) -> PlanRequest:
    """The planner's view of ``gpu`` for ``instances``.

    ``ollama_models`` is ``/api/ps`` (name, ``size_vram``) when Ollama answered, else None; what
    Ollama holds is then NVML's figure for processes tagged ``ollama``.
    """
    planned = tuple(instances)
    names = {r.provider for r in planned}
    reclaimable = sum(p.used_bytes or 0 for p in gpu.processes if p.owner in names)
    holders: dict[str, int] = {}
    for p in gpu.processes:
        if p.owner in names or p.owner in (OWNER_OLLAMA, OWNER_UNKNOWN):
            continue
        holders[p.owner] = holders.get(p.owner, 0) + (p.used_bytes or 0)
    models = tuple(ollama_models) if ollama_models is not None else ()
    nvml_ollama = gpu.held_by(OWNER_OLLAMA)
    resident = max(nvml_ollama, sum(m.vram_bytes for m in models))
    return PlanRequest(
        # what CUDA (and so vLLM) calls total: NVML's total less the driver-reserved memory
        # (NVML v2; 615 MiB on an H200, docs/gpu-check.md). Every fraction → bytes uses it.
        total_bytes=gpu.memory_total_bytes - (gpu.memory_reserved_bytes or 0),
        free_bytes=gpu.memory_free_bytes,
        instances=planned,
        reserve_bytes=reserve_bytes,
        reclaimable_bytes=reclaimable,
        ollama_models=models,
        ollama_resident_bytes=resident,
        ollama_reservation_bytes=ollama_reservation_bytes,
        other_holders=tuple(MemoryHolder(o, b) for o, b in sorted(holders.items())),
        gpu_index=gpu.index,
    )
