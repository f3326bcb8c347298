"""GPU leases: one mutation per GPU at a time, held across stop → start → rollback.

Two engines initialising on one card charge each other's allocations to themselves (DESIGN.md
§3), and a swap must not let an automatic restart slip in between its stop and its start. So
everything that changes what runs on a GPU holds that GPU's lease: ``async with
locks.lease(uuid) as lease``. ``start_engine`` and ``stop_engine`` take the lease as an argument
and refuse one that is not held or is for another card, so no caller can forget it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass


class LeaseError(RuntimeError):
    """A GPU mutation was attempted without holding that GPU's lease (a bug, said loudly)."""


@dataclass
class GpuLease:
    """Proof that the holder owns the locks of ``gpu_uuids`` until the ``async with`` block
    ends (one card for most work; both cards for a swap between two)."""

    gpu_uuids: frozenset[str]
    purpose: str
    since: float
    """``time.time()`` when it was taken (for "busy: … since 12:01:07")."""
    held: bool = True

    @property
    def gpu_uuid(self) -> str:
        """The cards covered, for messages."""
        return ", ".join(sorted(self.gpu_uuids))

    def require(self, gpu_uuid: str) -> None:
        if not self.held:
            raise LeaseError(f"the lease on {self.gpu_uuid} ({self.purpose}) was already released")
        if gpu_uuid not in self.gpu_uuids:
            raise LeaseError(f"a lease on {self.gpu_uuid} does not cover {gpu_uuid}")


class GpuLocks:
    """One lock per GPU UUID, created on first use; ``holder`` says who holds it now."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: dict[str, GpuLease] = {}

    @asynccontextmanager
    async def lease(self, gpu_uuid: str, purpose: str = "") -> AsyncIterator[GpuLease]:
        async with self.leases([gpu_uuid], purpose) as lease:
            yield lease

    @asynccontextmanager
    async def leases(self, gpu_uuids: Iterable[str], purpose: str = "") -> AsyncIterator[GpuLease]:
        """One lease over several cards, their locks taken in a fixed (sorted) order so two
        holders of overlapping sets never wait for each other crosswise."""
        uuids = sorted(set(gpu_uuids))
        async with contextlib.AsyncExitStack() as stack:
            for uuid in uuids:
                await stack.enter_async_context(self._locks.setdefault(uuid, asyncio.Lock()))
            lease = GpuLease(frozenset(uuids), purpose, time.time())
            for uuid in uuids:
                self._holders[uuid] = lease
            try:
                yield lease
            finally:
                lease.held = False
                for uuid in uuids:
                    self._holders.pop(uuid, None)

    def holder(self, gpu_uuid: str) -> GpuLease | None:
        """The lease held on ``gpu_uuid`` now, if any."""
        return self._holders.get(gpu_uuid)
