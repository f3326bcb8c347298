"""vLLM sleep mode of one keeper's engine: whether it sleeps, and putting it to sleep and waking it.

Asleep, the process lives and serves nothing (``POST /sleep?level=N``); ``POST /wake_up`` brings
it back, checked with a 1-token request before the router is told it is up. The keeper owns the
child and holds the one ``EngineSleep`` of its engine: it passes the child in and reads
``asleep`` (an engine that dies asleep is not restarted; a stopped one is awake by definition).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gpumgr.engines.vllm_client import EngineClient
from gpumgr.errors import BackendUnavailable
from gpumgr.supervisor import process
from gpumgr.supervisor.events import ChildReady, Sleeping, Woken

from .start import StartContext
from .stop import Drain


class EngineSleep:
    """The engine's vLLM sleep mode for one keeper: whether it is asleep, and the sleep and
    wake calls with the events they publish."""

    def __init__(self, backend: str, ctx: StartContext, engine: Callable[[], EngineClient]) -> None:
        self.backend = backend
        self.ctx = ctx
        """The keeper's start context (sink, timings, wake-time records); a reload replaces it."""
        self._engine = engine
        self.asleep = False
        """The engine is in vLLM sleep mode (the process lives, nothing is served)."""

    def found(self, child: process.ChildProcess | None) -> None:
        """The probe found the engine asleep though gpumgr did not put it to sleep (vLLM's
        ``/sleep`` needs no key): it holds a sleeper now, which only ``gpumgr wake`` wakes."""
        if child is not None and not child.exited:
            self.asleep = True

    async def adopted_asleep(self, child: process.ChildProcess) -> bool:
        """An adopted engine that answers: whether it sleeps (then it is reported ``sleeping``)."""
        if not await self._engine().is_sleeping():
            return False
        self.asleep = True
        self.ctx.sink(Sleeping(self.backend, child.pid, f"pid {child.pid} adopted asleep"))
        return True

    async def sleep(self, child: process.ChildProcess | None, level: int, detail: str,
                    drain: Drain | None = None) -> None:
        """Put the engine to sleep: ``draining`` first, then ``sleeping``. Raises
        ``BackendUnavailable`` when the engine refuses."""
        if child is None or child.exited:
            raise BackendUnavailable(f"{self.backend} has no running engine to put to sleep")
        if drain is not None:
            await drain()
        await self._engine().sleep(level, self.ctx.timing.start_timeout_s)
        self.asleep = True
        self.ctx.sink(Sleeping(self.backend, child.pid, detail))

    async def wake(self, child: process.ChildProcess | None) -> float:
        """Wake the engine, then check it with a 1-token request before the router is told it is
        up; the seconds it took. Raises ``BackendUnavailable``."""
        if child is None or child.exited or not self.asleep:
            raise BackendUnavailable(f"{self.backend} is not asleep")
        t0 = time.monotonic()
        # `starting` from the /wake_up call on, not after it: the router's hold (GPUMGR_HOLD_S)
        # sees the wake with its eta_s; a probe meanwhile finds it still asleep and leaves it
        self.ctx.sink(Woken(self.backend, child.pid))
        try:
            await self._engine().wake(self.ctx.timing.start_timeout_s)
        except BaseException:
            self.ctx.sink(Sleeping(self.backend, child.pid, "asleep: the wake failed"))
            raise
        self.asleep = False
        await self._engine().answers_one_token()
        wake_s = time.monotonic() - t0
        if self.ctx.startup_times is not None:  # the next wake is announced with this time
            await asyncio.to_thread(self.ctx.startup_times.record_wake, self.backend, wake_s)
        self.ctx.sink(ChildReady(self.backend, child.pid, wake_s))
        return wake_s
