"""The steps an operation is made of (stop with its drain, start, sleep, wake), each with its
progress lines and its timing, each raising ``OperationFailed`` with the engine's last log
lines. ``Reconciler.converge`` decides which to take; these only take them, under the lease the
caller holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psutil

from gpumgr.errors import GpumgrError
from gpumgr.gpu import MIB
from gpumgr.supervisor.logs import log_path, tail_lines
from gpumgr.supervisor.events import Draining

from .drain import wait_idle
from .lease import GpuLease
from .manager import BackendManager
from .prepare import LaunchPlanner

Progress = Callable[[str], None]
"""Receives one human line per step ("draining qwen-7b…", "memory released 7.9 GiB")."""


def quiet(_line: str) -> None:
    """A progress receiver that drops everything."""


class OperationFailed(GpumgrError):
    """The operation did not succeed; what was rolled back is said, with the engine's last lines."""

    def __init__(self, message: str, log_tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.log_tail = log_tail or []


@dataclass
class Steps:
    """What converging did, step by step (seconds), for the operation's outcome."""

    timings_s: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, seconds: float) -> None:
        self.timings_s[key] = round(self.timings_s.get(key, 0.0) + seconds, 3)


@dataclass(frozen=True)
class StartOptions:
    """How a start inside an operation runs: its health deadline, and the planner to use (one
    that may unload Ollama models when the operator asked for it)."""

    timeout_s: float | None = None
    planner: LaunchPlanner | None = None


SERVING = ("up", "degraded", "rate_limited")
"""The published states a drain starts from (the router may send requests there)."""


class EngineSteps:
    def __init__(self, manager: BackendManager) -> None:
        self._manager = manager

    def drain(self, name: str, progress: Progress) -> Callable[[], Awaitable[None]]:
        """The drain of a stop or sleep: ``draining`` (the router skips it), then the requests
        in flight finish (bounded by ``vllm.drain_timeout_s``)."""
        manager = self._manager
        timeout_s = manager.config.settings.vllm.drain_timeout_s

        async def drain() -> None:
            keeper = manager.keepers.get(name)
            child = keeper.child if keeper is not None else None
            h = manager.healths().get(name)
            if h is None or h.state.value not in SERVING:
                return  # never published up (starting) or not answering (down): nothing to drain
            if child is not None:
                manager.ctx.sink(Draining(name, child.pid))
            progress(f"draining {name}…")
            left = await wait_idle(keeper.engine, timeout_s) if keeper is not None else 0
            if left > 0:
                progress(f"{left} request(s) still running after {timeout_s:g} s; stopping anyway")

        return drain

    async def stop(self, name: str, lease: GpuLease, progress: Progress) -> float:
        t0 = time.monotonic()
        keeper = self._manager.keepers.get(name)
        serving = keeper is not None and keeper.running and not keeper.asleep
        outcome = await self._manager.stop_under(
            name, lease, self.drain(name, progress) if serving else None
        )
        if outcome is not None:
            how = "killed" if outcome.killed else "stopped"
            progress(f"{name} {how} in {outcome.stop_s:.1f} s"
                     + ("" if outcome.memory_released else "; GPU memory not yet released"))
        return time.monotonic() - t0

    async def start(self, name: str, lease: GpuLease, progress: Progress,
                     options: StartOptions) -> float:
        manager = self._manager
        progress(f"starting {name}…")
        try:
            startup_s = await manager.start_under(name, lease, options.timeout_s, options.planner)
        except TimeoutError:
            raise OperationFailed(
                f"{name} did not become healthy within {options.timeout_s:g} s",
                log_tail(manager, name),
            ) from None
        except GpumgrError as exc:
            raise OperationFailed(f"{name} failed to start: {exc}", log_tail(manager, name)) from None
        progress(f"{name} healthy in {startup_s:.1f} s")
        return startup_s

    async def sleep(self, name: str, lease: GpuLease, progress: Progress) -> float:
        t0 = time.monotonic()
        level, where = sleep_level(self._manager.weights_bytes(name))
        try:
            await self._manager.sleep_under(name, lease, level,
                                           f"asleep (level {level}): {where}",
                                           self.drain(name, progress))
        except GpumgrError as exc:
            raise OperationFailed(f"{name} did not go to sleep: {exc}",
                                  log_tail(self._manager, name)) from None
        progress(f"{name} asleep (level {level}) in {time.monotonic() - t0:.1f} s")
        return time.monotonic() - t0

    async def wake(self, name: str, lease: GpuLease, progress: Progress) -> float:
        progress(f"waking {name}…")
        manager = self._manager
        try:
            await asyncio.to_thread(manager.planner.make_room_to_wake, manager.provider(name),
                                    manager.plan_view())  # Ollama's models, as for a start
            wake_s = await self._manager.wake_under(name, lease)
        except GpumgrError as exc:
            raise OperationFailed(f"{name} failed to wake: {exc}", log_tail(self._manager, name)) from None
        progress(f"{name} awake and answering in {wake_s:.1f} s")
        return wake_s


def sleep_level(weights: int | None) -> tuple[int, str]:
    """Level 1 (weights to host RAM) when host RAM holds them, else level 2 (weights dropped,
    reloaded from disk on wake); with the words for it."""
    available = psutil.virtual_memory().available
    if weights is None or available > weights * 1.2:
        return 1, (f"{weights / 1024 / MIB:.1f} GiB of weights in host RAM" if weights
                   else "weights in host RAM")
    return 2, "weights dropped (host RAM short)"


def log_tail(manager: BackendManager, name: str, n: int = 20) -> list[str]:
    """The last lines of ``name``'s engine log (for an operation's error)."""
    return tail_lines(log_path(manager.config.paths.log_dir, name), n)
