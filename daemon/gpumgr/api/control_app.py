"""The control endpoints: start, stop, restart, swap, reload, logs, and the read-only plan.

They are added to the status app served on the unix socket ``<runtime_dir>/gpumgr.sock`` (mode
0660: the socket's permissions say who may control gpumgr) and, only when a bearer token is
configured, to the TCP listener, where every control call must carry that token. Without a token
the TCP listener has no control route at all.

Bodies are small JSON objects validated by their models (unknown keys refused, size capped). An
operation's progress streams back as NDJSON lines (``{"event": "progress", "message": …}``)
ending with one ``{"event": "done", "ok": …}`` line; a request that cannot start (unknown or
ambiguous name, busy, bad body) is answered at once with a 4xx and ``{"detail": …}``. The
operation runs in its own task: a client that disconnects does not cancel a swap half-way.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gpumgr.actions.names import AmbiguousName, NotManaged, UnknownName
from gpumgr.actions.operator import Busy, OperationFailed, Operator, Outcome
from gpumgr.actions.plan_report import daemon_plan
from gpumgr.api.control_guard import ControlGuard
from gpumgr.errors import GpumgrError, InputError
from gpumgr.logs import redact_text
from gpumgr.supervisor.logs import log_path, tail_lines

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 4096
NDJSON = "application/x-ndjson"
NAME = Field(min_length=1, max_length=200)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NameBody(_Body):
    name: str = NAME
    timeout_s: float | None = Field(default=None, gt=0, le=86400)


class StartBody(NameBody):
    evict_ollama: bool = False


class SwapBody(_Body):
    old: str = NAME
    new: str = NAME
    timeout_s: float | None = Field(default=None, gt=0, le=86400)


Reload = Callable[[], Awaitable[object]]
ObserveOperation = Callable[[str, bool, float, "dict[str, float] | None", str], None]
"""Told once per operation: (claim, ok, seconds, timings, message or error) — the lifecycle
metrics (``StatusWiring.observe_operation``)."""


def _bearer(token: str | None) -> Callable[[Request], None]:
    """A dependency refusing a call without ``Authorization: Bearer <token>`` (when a token is
    set: the TCP listener); compared in constant time."""

    def check(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(401, "control calls need the bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


async def _small_body(request: Request) -> None:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")
    if len(await request.body()) > MAX_BODY_BYTES:
        raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode() + b"\n"


def _refusal(exc: GpumgrError) -> HTTPException:
    if isinstance(exc, Busy):
        return HTTPException(409, str(exc))
    if isinstance(exc, UnknownName):
        return HTTPException(404, str(exc))
    if isinstance(exc, (AmbiguousName, NotManaged)):
        return HTTPException(400, str(exc))
    return HTTPException(400, redact_text(str(exc)))


def _same_provider(operator: Operator, old: str, new: str) -> bool:
    """Whether two names mean one provider (a bad name is left to the operation's own refusal)."""
    try:
        return operator.resolve(old) == operator.resolve(new)
    except GpumgrError:
        return False


def _run_streamed_impl(
    operator: Operator, what: Callable[[list[str]], str], names: list[str],
    work: Callable[[Callable[[str], None]], Awaitable[Outcome]],
    observe: ObserveOperation | None = None,
) -> StreamingResponse:
    """Refuse at once what cannot start (a bad name, another mutation running); else claim the
    one-mutation slot as ``what(resolved names)``, run ``work`` in its own task and stream its
    progress and its outcome."""
    try:
        claim = operator.claim(what([operator.resolve(n) for n in names]))
    except GpumgrError as exc:
        raise _refusal(exc) from None
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def progress(message: str) -> None:
        queue.put_nowait(_line({"event": "progress", "message": redact_text(message)}))

    async def run() -> None:
        t0 = time.monotonic()
        ended: tuple[bool, dict[str, float] | None, str] = (False, None, "")  # for ``observe``
        try:
            outcome = await work(progress)
            ended = (True, outcome.timings_s, outcome.message)
            queue.put_nowait(_line({"event": "done", "ok": True, "message": outcome.message,
                                    "timings_s": outcome.timings_s}))
        except OperationFailed as exc:
            ended = (False, None, str(exc))
            queue.put_nowait(_line({"event": "done", "ok": False, "error": redact_text(str(exc)),
                                    "log_tail": [redact_text(x) for x in exc.log_tail]}))
        except GpumgrError as exc:
            ended = (False, None, str(exc))
            queue.put_nowait(_line({"event": "done", "ok": False, "error": redact_text(str(exc)),
                                    "log_tail": []}))
        except Exception as exc:  # noqa: BLE001 - reported to the caller, logged, never raised
            log.error("operation.crashed", error=f"{type(exc).__name__}: {exc}")
            queue.put_nowait(_line({"event": "done", "ok": False,
                                    "error": f"gpumgr internal error: {type(exc).__name__}",
                                    "log_tail": []}))
        finally:
            operator.release(claim)  # if the operation never took it over (failed before)
            queue.put_nowait(None)
            if observe is not None:
                observe(claim.what, ended[0], time.monotonic() - t0, ended[1], ended[2])

    task = asyncio.get_running_loop().create_task(run(), name="operation")
    operator_tasks.add(task)
    task.add_done_callback(operator_tasks.discard)

    async def stream() -> AsyncIterator[bytes]:
        while (item := await queue.get()) is not None:
            yield item

    return StreamingResponse(stream(), media_type=NDJSON)


operator_tasks: set[asyncio.Task[None]] = set()
"""Operations in flight (kept referenced until they end, whatever their client does)."""


def add_control_routes(
    app: FastAPI, operator: Operator, reload: Reload, *, token: str | None = None,
    observe: ObserveOperation | None = None,
) -> None:
    """Add the control endpoints to ``app`` (the socket's app; the TCP app only with a token);
    ``observe`` is told how each operation ended (the lifecycle metrics).

    ``ControlGuard`` checks the token and the body's size on the headers, before FastAPI reads
    a body; the dependencies below repeat both checks for a request that reaches a route."""
    _run_streamed = functools.partial(_run_streamed_impl, observe=observe)
    app.add_middleware(ControlGuard, token=token, max_body=MAX_BODY_BYTES)
    router = APIRouter(
        prefix="/v1/control", tags=["control"],
        dependencies=[Depends(_bearer(token)), Depends(_small_body)],
    )

    @router.post("/start", response_class=StreamingResponse)
    async def start(body: StartBody) -> StreamingResponse:
        return _run_streamed(
            operator, lambda n: f"start {n[0]}", [body.name],
            lambda p: operator.start(body.name, p, timeout_s=body.timeout_s,
                                     evict_ollama=body.evict_ollama))

    @router.post("/stop", response_class=StreamingResponse)
    async def stop(body: NameBody) -> StreamingResponse:
        return _run_streamed(operator, lambda n: f"stop {n[0]}", [body.name],
                             lambda p: operator.stop(body.name, p))

    @router.post("/restart", response_class=StreamingResponse)
    async def restart(body: NameBody) -> StreamingResponse:
        return _run_streamed(operator, lambda n: f"restart {n[0]}", [body.name],
                             lambda p: operator.restart(body.name, p, timeout_s=body.timeout_s))

    @router.post("/sleep", response_class=StreamingResponse)
    async def sleep(body: NameBody) -> StreamingResponse:
        return _run_streamed(operator, lambda n: f"sleep {n[0]}", [body.name],
                             lambda p: operator.sleep(body.name, p))

    @router.post("/wake", response_class=StreamingResponse)
    async def wake(body: NameBody) -> StreamingResponse:
        return _run_streamed(operator, lambda n: f"wake {n[0]}", [body.name],
                             lambda p: operator.wake(body.name, p))

    @router.post("/swap", response_class=StreamingResponse)
    async def swap(body: SwapBody) -> StreamingResponse:
        if _same_provider(operator, body.old, body.new):
            raise HTTPException(400, f"swap {body.old} {body.new}: both name "
                                     f"{operator.resolve(body.old)}; name two providers")
        return _run_streamed(operator, lambda n: f"swap {n[0]} → {n[1]}", [body.old, body.new],
                             lambda p: operator.swap(body.old, body.new, p, timeout_s=body.timeout_s))

    @router.post("/reload")
    async def reload_config() -> dict[str, Any]:
        """Queued behind the command in flight (a swap, say) and applied after it; answers
        what it did, or every configuration error with file:line (nothing changed then)."""
        outcome: Any = await reload()
        if not outcome.applied:
            raise HTTPException(400, "the configuration is invalid; nothing changed:\n"
                                + "\n".join(outcome.errors))
        return {"ok": True, **vars(outcome.report), "warnings": outcome.warnings}

    @router.get("/plan")
    async def plan(name: list[str] = Query(default=[])) -> dict[str, Any]:
        """``gpumgr plan``'s answer from the live view; reads only (no slot taken, no unload)."""
        try:
            return await daemon_plan(operator.manager, name[:64])
        except InputError as exc:
            raise _refusal(exc) from None
        except GpumgrError as exc:  # no GPU reading: not the request's fault
            raise HTTPException(503, redact_text(str(exc))) from None

    @router.get("/logs/{name}", response_class=StreamingResponse)
    async def logs(name: str, n: int = Query(default=50, ge=0, le=10000),
                   follow: bool = False) -> StreamingResponse:
        try:
            backend = operator.resolve(name)
        except NotManaged:
            raise HTTPException(400, f"{name} is not run by gpumgr, so gpumgr keeps no log of "
                                     "it: read that backend's own log") from None
        except GpumgrError as exc:
            raise _refusal(exc) from None
        path = log_path(operator.manager.config.paths.log_dir, backend)

        async def stream() -> AsyncIterator[bytes]:
            lines = await asyncio.to_thread(tail_lines, path, n)
            for line in lines:
                yield (redact_text(line) + "\n").encode()
            if not follow:
                return
            offset = await asyncio.to_thread(_size, path)
            while True:
                await asyncio.sleep(0.25)
                size = await asyncio.to_thread(_size, path)
                if size < offset:  # rotated (copy-truncate)
                    offset = 0
                if size > offset:
                    chunk = await asyncio.to_thread(_read_from, path, offset)
                    offset += len(chunk)
                    text = chunk.decode(errors="replace")
                    yield "".join(redact_text(x) + "\n" for x in text.splitlines()).encode()

        return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")

    app.include_router(router)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(1024 * 1024)
