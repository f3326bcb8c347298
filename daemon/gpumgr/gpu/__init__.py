"""GPU inventory: what each card holds right now, from NVML or from the simulated driver.

One interface (``GpuBackend.read() -> GpuInventory``), two backends (``gpumgr.gpu.nvml``,
``gpumgr.sim.gpu_backend``), so the planner and the status document see the same numbers whether
the card is real or simulated. Memory crosses this boundary in bytes (NVML's unit); the ``*_mib``
properties are for people and the status document. A backend never raises for a missing or
broken driver: it returns an inventory with ``error`` set ("GPU unavailable: …"), and callers that
need a GPU call ``require()`` to turn that into ``GpuUnavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from gpumgr.errors import GpuUnavailable

MIB = 1024 * 1024

OWNER_UNKNOWN = "unknown"
OWNER_OLLAMA = "ollama"

ProcessKind = Literal["compute", "graphics"]


@dataclass(frozen=True)
class GpuProcess:
    """One process holding memory on a card, with its owner once attributed.

    ``used_bytes`` is None where the driver cannot say (NVML returns "not available" under WDDM
    and in some containers); ``pgid`` is None when the process cannot be inspected.
    """

    pid: int
    used_bytes: int | None
    name: str = ""
    kind: ProcessKind = "compute"
    pgid: int | None = None
    owner: str = OWNER_UNKNOWN

    @property
    def used_mib(self) -> int | None:
        return None if self.used_bytes is None else self.used_bytes // MIB

    def with_owner(self, owner: str) -> GpuProcess:
        return replace(self, owner=owner)


@dataclass(frozen=True)
class GpuInfo:
    """One card at one moment. Optional readings are None where the driver does not support them."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    memory_reserved_bytes: int | None = None
    temperature_c: int | None = None
    utilization_pct: int | None = None
    processes: tuple[GpuProcess, ...] = ()
    compute_capability: str | None = None

    @property
    def memory_total_mib(self) -> int:
        return self.memory_total_bytes // MIB

    @property
    def memory_used_mib(self) -> int:
        return -(-self.memory_used_bytes // MIB)  # round up: never understate what is taken

    @property
    def memory_free_mib(self) -> int:
        return self.memory_free_bytes // MIB  # round down: never overstate what is free

    @property
    def unattributed_bytes(self) -> int:
        """Memory used but held by no listed process (a display, the driver, hidden processes)."""
        listed = sum(p.used_bytes or 0 for p in self.processes)
        return max(0, self.memory_used_bytes - listed)

    def held_by(self, owner: str) -> int:
        """Bytes the processes of one owner hold on this card."""
        return sum(p.used_bytes or 0 for p in self.processes if p.owner == owner)

    def to_dict(self) -> dict[str, Any]:
        """The status document's shape (DESIGN.md §5), plus the optional readings."""
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "memory_total_mib": self.memory_total_mib,
            "memory_used_mib": self.memory_used_mib,
            "memory_free_mib": self.memory_free_mib,
            "memory_reserved_mib": (
                None if self.memory_reserved_bytes is None else self.memory_reserved_bytes // MIB
            ),
            "temperature_c": self.temperature_c,
            "utilization_pct": self.utilization_pct,
            "processes": [
                {
                    "pid": p.pid,
                    "used_mib": p.used_mib,
                    "name": p.name,
                    "kind": p.kind,
                    "owner": p.owner,
                }
                for p in self.processes
            ],
        }


@dataclass(frozen=True)
class GpuInventory:
    """Every card a backend sees, or why it sees none (``error``, one line)."""

    backend: Literal["nvml", "simulated"]
    gpus: tuple[GpuInfo, ...] = ()
    error: str | None = None
    driver_version: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def available(self) -> bool:
        return self.error is None

    def require(self) -> GpuInventory:
        """This inventory, or ``GpuUnavailable`` with the one-line reason."""
        if self.error is not None:
            raise GpuUnavailable(self.error)
        return self

    def gpu(self, index: int) -> GpuInfo:
        """The card with NVML index ``index``; ``GpuUnavailable`` when there is none."""
        for g in self.gpus:
            if g.index == index:
                return g
        raise GpuUnavailable(
            f"GPU unavailable: no GPU with index {index} ({len(self.gpus)} card(s) found)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "available": self.available,
            "error": self.error,
            "driver_version": self.driver_version,
            "warnings": list(self.warnings),
            "gpus": [g.to_dict() for g in self.gpus],
        }


class GpuBackend(Protocol):
    """A source of inventories. ``read()`` never raises for driver trouble (see module doc)."""

    def read(self) -> GpuInventory: ...


__all__ = [
    "MIB",
    "OWNER_OLLAMA",
    "OWNER_UNKNOWN",
    "GpuBackend",
    "GpuInfo",
    "GpuInventory",
    "GpuProcess",
]
