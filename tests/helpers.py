"""The small helpers many test files need: a free port, a wait until something holds, is a pid alive.

``free_port``, ``wait_for`` and ``alive`` are the daemon harness's own (``gpumgr.sim.harness``,
which the benchmarks use too), so a test and the harness poll and probe the same way. A test that
needs only these imports them from here; one that drives a ``DaemonHarness`` may take them from
the harness with it. Never a copy in the test file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from gpumgr.sim.harness import alive, free_port, wait_for

__all__ = ["alive", "free_port", "wait_for", "wait_for_async"]


async def wait_for_async(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "",
                         poll_s: float = 0.02) -> Any:
    """``wait_for`` for a test running on an event loop: polls without blocking the loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(poll_s)
