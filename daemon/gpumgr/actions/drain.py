"""Draining: before an engine is stopped, the router is told (``draining``) and the requests it
is serving are allowed to finish, bounded by ``vllm.drain_timeout_s``.

vLLM exposes its in-flight count as ``vllm:num_requests_running`` (plus ``…_waiting``) on
``/metrics``; the drain waits until both are 0, or the timeout, or the engine stops answering.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from gpumgr.engines.vllm_client import EngineClient

log = structlog.get_logger(__name__)

DRAIN_POLL_S = 0.1


async def wait_idle(engine: EngineClient, timeout_s: float, poll_s: float = DRAIN_POLL_S) -> int:
    """Poll the engine's ``/metrics`` until the requests in flight when the drain began have finished;
    the requests still in flight when it returned (0: drained; -1: the engine did not say).

    Done when nothing runs or waits, or, with a client that keeps sending straight to the port
    (no router honouring ``draining``), once as many requests finished as were in flight at
    the start (``vllm:request_success_total``; vLLM serves in arrival order, so those are the
    earlier ones). Bounded by ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    in_flight = -1
    target: int | None = None
    base: int | None = None
    while True:
        load = await engine.load(min(2.0, timeout_s or 2.0))
        if load is None:
            return in_flight  # not answering: nothing more to wait for
        in_flight = load.running + load.waiting
        if target is None:
            target, base = in_flight, load.finished
        finished_since = (
            load.finished - base if load.finished is not None and base is not None else None
        )
        if in_flight == 0 or (finished_since is not None and finished_since >= target):
            return 0
        if time.monotonic() >= deadline:
            return in_flight
        await asyncio.sleep(poll_s)
