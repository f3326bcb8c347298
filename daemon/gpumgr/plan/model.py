"""The planner's inputs and outputs: frozen dataclasses, no logic beyond derived figures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gpumgr.plan.estimate import MIB, MemoryEstimate


def budget_bytes_for(total_bytes: int, fraction: float) -> int:
    """vLLM's own figure for a fraction: ``ceil(total × fraction)`` in float arithmetic, exactly
    as its start-up check computes it, so a plan never disagrees with vLLM by a byte."""
    return math.ceil(total_bytes * fraction)


HUNDREDTHS = 100


def hundredths_budget(total_bytes: int, h: int) -> int:
    """The budget vLLM computes for ``--gpu-memory-utilization`` = h / 100."""
    return budget_bytes_for(total_bytes, h / HUNDREDTHS)


def min_hundredths(total_bytes: int, need_bytes: int) -> int:
    """The smallest h whose budget holds ``need_bytes`` (may exceed 100: does not fit at all)."""
    h = max(1, -(-need_bytes * HUNDREDTHS // total_bytes))
    while hundredths_budget(total_bytes, h) < need_bytes:
        h += 1
    while h > 1 and hundredths_budget(total_bytes, h - 1) >= need_bytes:
        h -= 1
    return h


def max_hundredths(total_bytes: int, room_bytes: int) -> int:
    """The largest h (0..100) whose budget stays within ``room_bytes``."""
    if room_bytes <= 0:
        return 0
    h = min(HUNDREDTHS, room_bytes * HUNDREDTHS // total_bytes)
    while h > 0 and hundredths_budget(total_bytes, h) > room_bytes:
        h -= 1
    while h < HUNDREDTHS and hundredths_budget(total_bytes, h + 1) <= room_bytes:
        h += 1
    return h


def mib(n_bytes: int) -> int:
    """Bytes to MiB for people, rounding away from zero (a shortfall is never understated)."""
    return -(-n_bytes // MIB)


@dataclass(frozen=True)
class InstanceRequest:
    """One vLLM provider to place: its estimate and, when the registry pins it, its fraction."""

    provider: str
    estimate: MemoryEstimate
    pinned_fraction: float | None = None


@dataclass(frozen=True)
class OllamaModel:
    """A model Ollama has loaded (``/api/ps``): its name and ``size_vram``."""

    name: str
    vram_bytes: int
    pinned: bool = False
    """Served by a ``pinned: true`` Ollama provider: never unloaded to make room."""


@dataclass(frozen=True)
class MemoryHolder:
    """Memory held by a managed backend outside the planned set (a candidate to stop)."""

    owner: str
    held_bytes: int


@dataclass(frozen=True)
class PlanRequest:
    """Everything the planner needs about one GPU.

    ``free_bytes`` is what the driver reports now (display, Ollama, unknown processes and
    running backends already subtracted). ``reclaimable_bytes`` is what the planned providers'
    own running instances hold: the plan describes them (re)started, so it counts as free.
    ``ollama_reservation_bytes`` keeps room for Ollama beyond what it holds now; Ollama's
    resident models are in ``ollama_models`` (already inside "used").
    """

    total_bytes: int
    free_bytes: int
    instances: tuple[InstanceRequest, ...]
    reserve_bytes: int = 0
    reclaimable_bytes: int = 0
    ollama_models: tuple[OllamaModel, ...] = ()
    ollama_resident_bytes: int | None = None
    ollama_reservation_bytes: int = 0
    other_holders: tuple[MemoryHolder, ...] = ()
    gpu_index: int = 0

    @property
    def ollama_held_bytes(self) -> int:
        """What Ollama holds now: NVML's figure when given, else the sum of ``size_vram``."""
        if self.ollama_resident_bytes is not None:
            return self.ollama_resident_bytes
        return sum(m.vram_bytes for m in self.ollama_models)

    @property
    def ollama_extra_bytes(self) -> int:
        """Room kept for Ollama beyond what it already holds (the configured reservation)."""
        return max(0, self.ollama_reservation_bytes - self.ollama_held_bytes)

    @property
    def startable_free_bytes(self) -> int:
        """Free memory the first instance may see: free + reclaimable - Ollama's extra room."""
        return self.free_bytes + self.reclaimable_bytes - self.ollama_extra_bytes

    @property
    def available_bytes(self) -> int:
        """What the plan may hand out, contexts included: startable free minus the reserve."""
        return self.startable_free_bytes - self.reserve_bytes


@dataclass(frozen=True)
class InstanceBudget:
    """One provider's slice. ``fraction`` is what ``--gpu-memory-utilization`` gets."""

    provider: str
    start_index: int
    fraction: float
    pinned: bool
    budget_bytes: int
    context_bytes: int
    min_budget_bytes: int
    kv_cache_bytes: int
    kv_tokens: int
    max_concurrency: float
    max_model_len: int
    max_num_seqs: int
    free_at_start_bytes: int
    estimate: MemoryEstimate

    @property
    def footprint_bytes(self) -> int:
        """What the instance takes from the card: its context plus its budget."""
        return self.context_bytes + self.budget_bytes

    def to_dict(self) -> dict[str, Any]:
        e = self.estimate
        return {
            "provider": self.provider,
            "start_index": self.start_index,
            "gpu_memory_utilization": self.fraction,
            "pinned": self.pinned,
            "budget_bytes": self.budget_bytes,
            "budget_mib": self.budget_bytes // MIB,
            "context_mib": self.context_bytes // MIB,
            "min_budget_mib": mib(self.min_budget_bytes),
            "weights_bytes": e.weights_bytes,
            "weights_source": e.weights_source,
            "kv_bytes_per_token": e.kv_bytes_per_token,
            "kv_cache_bytes": self.kv_cache_bytes,
            "kv_cache_mib": self.kv_cache_bytes // MIB,
            "kv_tokens": self.kv_tokens,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_concurrency": round(self.max_concurrency, 2),
            "enforce_eager": e.enforce_eager,
            "free_at_start_mib": self.free_at_start_bytes // MIB,
        }


@dataclass(frozen=True)
class Shortfall:
    """Why a plan does not fit: the provider, by how much, and the nearest fixes, best first."""

    provider: str
    shortfall_bytes: int
    reason: str
    fixes: tuple[str, ...] = ()

    @property
    def shortfall_mib(self) -> int:
        return mib(self.shortfall_bytes)

    @property
    def message(self) -> str:
        line = f"{self.provider} does not fit: short by {self.shortfall_mib} MiB ({self.reason})"
        if self.fixes:
            line += f"; nearest fix: {self.fixes[0]}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "shortfall_mib": self.shortfall_mib,
            "shortfall_bytes": self.shortfall_bytes,
            "reason": self.reason,
            "fixes": list(self.fixes),
            "message": self.message,
        }


@dataclass(frozen=True)
class VramPlan:
    """The slices for one GPU, in start order, or why they do not fit (``problems``)."""

    request: PlanRequest
    instances: tuple[InstanceBudget, ...]
    problems: tuple[Shortfall, ...] = field(default_factory=tuple)

    @property
    def feasible(self) -> bool:
        return not self.problems

    @property
    def handed_out_bytes(self) -> int:
        """Contexts plus budgets of every instance."""
        return sum(i.footprint_bytes for i in self.instances)

    @property
    def unused_bytes(self) -> int:
        return self.request.available_bytes - self.handed_out_bytes

    def instance(self, provider: str) -> InstanceBudget:
        for i in self.instances:
            if i.provider == provider:
                return i
        raise KeyError(provider)

    def to_dict(self) -> dict[str, Any]:
        r = self.request
        return {
            "gpu_index": r.gpu_index,
            "feasible": self.feasible,
            "memory_total_mib": r.total_bytes // MIB,
            "memory_free_mib": r.free_bytes // MIB,
            "reserve_mib": r.reserve_bytes // MIB,
            "reclaimable_mib": r.reclaimable_bytes // MIB,
            "ollama_resident_mib": mib(r.ollama_held_bytes),
            "ollama_extra_reserved_mib": mib(r.ollama_extra_bytes),
            "available_mib": r.available_bytes // MIB,
            "handed_out_mib": mib(self.handed_out_bytes),
            "unused_mib": self.unused_bytes // MIB,
            "instances": [i.to_dict() for i in self.instances],
            "problems": [p.to_dict() for p in self.problems],
        }
