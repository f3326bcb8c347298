"""The one stop procedure: SIGTERM to the group, SIGKILL after a timeout, then wait until
the GPU shows the memory back.

Every stop goes through here (an operator's stop, a hung engine, the orphans of a crashed one,
a failed start, an adopted engine nobody wants), under the GPU's lease, so the next plan on the
card never counts memory that is still held.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gpumgr.supervisor import process

from .lease import GpuLease

Drain = Callable[[], Awaitable[None]]
"""Waits (bounded) for in-flight requests to finish before the signal; emits ``Draining``."""


@dataclass(frozen=True)
class StopTiming:
    term_timeout_s: float = 30.0
    """SIGTERM → SIGKILL."""
    memory_timeout_s: float = 30.0
    """How long to wait for the GPU to show the memory back after the group is gone."""


async def stop_engine(
    lease: GpuLease,
    gpu_uuid: str,
    child: process.ChildProcess,
    timing: StopTiming,
    memory_released: process.MemoryReleased | None,
) -> process.StopOutcome:
    """Stop ``child``'s whole process group on ``gpu_uuid`` (whose lease the caller holds). A
    ``Drain`` (an operator's stop) runs before this, by the backend's keeper, which announces
    the stop in between."""
    lease.require(gpu_uuid)
    return await process.stop(
        child,
        term_timeout_s=timing.term_timeout_s,
        memory_released=memory_released,
        memory_timeout_s=timing.memory_timeout_s,
    )
