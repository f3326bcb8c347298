"""The hang watcher: an engine ``down`` for ``health.restart_unresponsive_after_s`` while its
process lives is hung; the watcher asks the reconciler to restart it (a command like any other,
in its turn). The keeper's restart policy and its limits then apply to the exit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from gpumgr.backend_state import BackendState
from gpumgr.health.machine import BackendHealth

from .manager import BackendManager
from .reconciler import Reconciler

UNRESPONSIVE_CHECK_S = 1.0
"""How often the watcher looks for engines that are down while their process lives."""


class HangWatcher:
    def __init__(self, reconciler: Reconciler,
                 health: Callable[[], Mapping[str, BackendHealth]]) -> None:
        self.reconciler = reconciler
        self._health = health

    @property
    def manager(self) -> BackendManager:
        return self.reconciler.manager

    def check(self, now: float) -> list[str]:
        """Ask for a restart of every managed engine that has been ``down`` long enough while
        its process lives; the names asked for. (A sleeper that died is handed to the
        reconciler too: it is no longer desired.)"""
        for name, keeper in list(self.manager.keepers.items()):
            if (not keeper.running and not keeper.asleep and keeper.child is None
                    and name in self.reconciler.desired.sleeping):
                self.reconciler.sleeper_gone(name)
        after_s = self.manager.config.settings.health.restart_unresponsive_after_s
        if after_s is None:
            return []
        asked: list[str] = []
        healths = self._health()
        for name, keeper in self.manager.keepers.items():
            h = healths.get(name)
            if h is None or h.state is not BackendState.DOWN or now - h.since < after_s:
                continue
            if keeper.child is None or keeper.child.exited:
                continue
            reason = f"down for {after_s:g} s while its process lives: {h.reason}"
            if self.reconciler.hung(name, reason):
                asked.append(name)
        return asked

    async def run(self) -> None:
        while True:
            await asyncio.sleep(UNRESPONSIVE_CHECK_S)
            self.check(time.time())
