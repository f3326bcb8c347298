"""Small asyncio helpers shared by the daemon's parts."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import TypeVar

T = TypeVar("T")


async def run_in_daemon_thread(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a daemon thread, awaited; abandoned (not joined) if the caller is
    cancelled. For work the daemon must not wait for at exit: SIGTERM during a 9 GB download
    must not wait for it (``asyncio.run`` joins executor threads); the next pull cleans up."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            outcome: tuple[T | None, BaseException | None] = (fn(*args), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(deliver, *outcome)

    name = f"gpumgr:{getattr(fn, '__name__', 'work')}"
    threading.Thread(target=work, name=name, daemon=True).start()
    return await future


def spawn_task(
    tasks: set[asyncio.Task[None]], coro: Coroutine[object, object, None], name: str
) -> asyncio.Task[None]:
    """Create a task kept in ``tasks`` until it ends (so it is not garbage-collected)."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task
