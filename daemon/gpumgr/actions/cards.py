"""The cards as the daemon last read them: GPU index → UUID, or why they cannot be read (no
driver, a driver/library mismatch after an upgrade). Nothing new is planned or started without a
readable card; engines that serve are still adopted and kept."""

from __future__ import annotations

import structlog

from gpumgr.errors import GpuUnavailable
from gpumgr.gpu import GpuInventory

log = structlog.get_logger(__name__)


class Cards:
    def __init__(self) -> None:
        self._uuids: dict[int, str] = {}
        self.error: str | None = None
        """Why the cards cannot be read (None when they can)."""

    def read(self, inventory: GpuInventory) -> None:
        self.error = None if inventory.available else (inventory.error or "GPU unavailable")
        if self.error:
            log.error("gpu.unavailable", error=self.error)
        self._uuids = {g.index: g.uuid for g in inventory.gpus}

    def why_not(self, index: int) -> str | None:
        """Why nothing can start on card ``index`` now (None: it can)."""
        if self.error is not None:
            return self.error
        if index not in self._uuids:
            return f"GPU {index} not found ({len(self._uuids)} card(s))"
        return None

    def uuid(self, index: int) -> str:
        """Card ``index``'s UUID; ``GpuUnavailable`` when it cannot be had."""
        why = self.why_not(index)
        if why is not None:
            raise GpuUnavailable(why)
        return self._uuids[index]

    def known_uuid(self, index: int) -> str | None:
        """The UUID last read for ``index``, readable now or not (an adopted engine's card)."""
        return self._uuids.get(index)
