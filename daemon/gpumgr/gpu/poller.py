"""The GPU poller: reads the inventory every second (and soon after each state change), owner
attribution applied, and hands it to whoever publishes it.

Its own task, apart from the health probes and hung-engine checks, so a slow or hung NVML read
delays only the GPU figures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

import structlog

from gpumgr.gpu import GpuBackend, GpuInventory
from gpumgr.gpu.attribution import attribute

log = structlog.get_logger(__name__)

GPU_POLL_S = 1.0
"""How often the GPU's memory and processes are re-read into the document."""


class GpuPoller:
    def __init__(
        self,
        inventory: GpuBackend,
        managed_pids: Callable[[], Mapping[int, str]],
        publish: Callable[[GpuInventory], None],
        interval_s: float = GPU_POLL_S,
    ) -> None:
        self._inventory = inventory
        self._managed_pids = managed_pids
        self._publish = publish
        self._interval_s = interval_s
        self.last: GpuInventory | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None

    async def poll_once(self) -> GpuInventory:
        """Read now (in a worker thread), attribute, publish; the attributed inventory."""
        managed = dict(self._managed_pids())  # taken on the loop, not in the worker thread
        inv = await asyncio.to_thread(self._inventory.read)
        inv = attribute(inv, managed, managed)
        self.last = inv
        self._publish(inv)
        return inv

    async def _poll_safely(self) -> None:
        try:
            await self.poll_once()
        except Exception as exc:  # noqa: BLE001 - a bad read must not end a loop or a task
            log.warning("gpu.poll_failed", error=f"{type(exc).__name__}: {exc}")

    def refresh_soon(self) -> None:
        """A state change usually moves memory: show it now rather than within a second."""
        if self._refresh is None or self._refresh.done():
            with contextlib.suppress(RuntimeError):  # no running loop (tests driving callbacks)
                self._refresh = asyncio.get_running_loop().create_task(self._poll_safely())

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="gpu-poll")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._poll_safely()

    async def stop(self) -> None:
        for task in (self._loop_task, self._refresh):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
