"""The read-only status app: what the router and operators read (DESIGN.md §5).

``GET /v1/status``, ``GET /v1/backends/{name}``, ``GET /v1/events`` (Server-Sent Events),
``GET /metrics``, ``GET /healthz`` and ``GET /v1/prometheus/targets`` (Prometheus HTTP service
discovery, docs/monitoring.md). It only reads the publisher; nothing here changes state,
which is why it may listen on TCP. The control endpoints (start/stop/swap) are a separate app on
a unix socket, built by their own factory and served by the same ``gpumgr.api.server``.

The handlers return the publisher's pre-serialised bytes instead of re-validating the document
on every request (200 readers must not cost 200 serialisations); the ``response_model``
declarations still make the OpenAPI schema the documented contract.
"""

from __future__ import annotations

import asyncio
import os
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from gpumgr.api.hosts import AllowedHosts
from gpumgr.status.document import HEARTBEAT_S, BackendStatus, StatusDocument, utc_now
from gpumgr.status.publisher import BackendEvent, StatusPublisher
from gpumgr.status.targets import TargetGroup

DEFAULT_HEARTBEAT_S = HEARTBEAT_S
"""At most this long without a frame on ``/v1/events`` (the document states ``max_age_s``)."""
JSON = "application/json"


class ErrorBody(BaseModel):
    detail: str


class Healthz(BaseModel):
    status: str
    pid: int
    started_at: datetime
    uptime_s: float
    generated_at: datetime
    subscribers: int


def sse_frame(event: BackendEvent) -> bytes:
    """One SSE message: ``event: backend``, its own ``id`` (``epoch:seq``: the daemon's boot id
    and the change's sequence number, or ``epoch:seq-part`` for a snapshot frame), the JSON."""
    # The JSON is compact (no newlines), so a single data line carries it.
    return b"event: backend\nid: %s\ndata: %s\n\n" % (event.event_id.encode(), event.data)


HEARTBEAT_FRAME = b": heartbeat\n\n"


def create_status_app(
    publisher: StatusPublisher, *, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    listen_host: str | None = None,
    targets: Callable[[], list[TargetGroup]] | None = None,
) -> FastAPI:
    # No Swagger/ReDoc pages: they load their JavaScript from a CDN (broken offline); the
    # contract is /openapi.json. ``listen_host``: gpumgr.yaml's listen host (DNS rebinding guard).
    app = FastAPI(
        title="gpumgr status",
        version="1",
        summary="Live status of the GPU host's model backends (read-only).",
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(AllowedHosts, listen_host=listen_host)
    app.state.publisher = publisher

    @app.get(
        "/v1/status",
        response_model=StatusDocument,
        summary="The status document",
        description="The router's contract (docs/status.md, DESIGN.md §5); the same JSON as status.json.",
    )
    async def get_status() -> Response:
        return Response(publisher.document_json, media_type=JSON)

    @app.get(
        "/v1/backends/{name}",
        response_model=BackendStatus,
        responses={404: {"model": ErrorBody, "description": "No backend of that name"}},
        summary="One backend of the status document",
    )
    async def get_backend(name: str) -> Response:
        backend = publisher.document.backend(name)
        if backend is None:
            return JSONResponse({"detail": f"unknown backend: {name}"}, status_code=404)
        return Response(backend.model_dump_json(), media_type=JSON)

    @app.get(
        "/v1/events",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {"schema": BackendStatus.model_json_schema()}},
                "description": (
                    "Server-Sent Events. Each `event: backend` carries one backend object (the "
                    "schema above) in `data` and `epoch:seq` (boot id, sequence number) in `id`; a "
                    f"`: heartbeat` comment comes every {heartbeat_s:g} s. With snapshot=true "
                    "(the default) the stream opens with every backend's current state; a "
                    "subscriber that falls behind receives every backend's current state again."
                ),
            }
        },
        summary="Backend changes as Server-Sent Events",
    )
    async def get_events(
        snapshot: bool = Query(True, description="Start with the current state of every backend"),
    ) -> StreamingResponse:
        return StreamingResponse(
            _event_stream(publisher, snapshot=snapshot, heartbeat_s=heartbeat_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
        summary="Prometheus metrics",
    )
    async def get_metrics() -> Response:
        return Response(publisher.metrics.render(), media_type=publisher.metrics.content_type)

    @app.get(
        "/v1/prometheus/targets",
        response_class=Response,
        responses={200: {"content": {JSON: {}}, "description": "http_sd_configs target groups"}},
        summary="Prometheus HTTP service discovery",
        description=(
            "The engines gpumgr means to be up (and Ollama), as `http_sd_configs` target groups "
            "with the labels gpumgr_backend, model_name, gpu, provider_type, gpumgr_asleep "
            "(docs/monitoring.md). An engine stopped on purpose is not listed."
        ),
    )
    async def get_prometheus_targets() -> Response:
        groups = targets() if targets is not None else []
        return Response(json.dumps(groups).encode(), media_type=JSON)

    @app.get("/healthz", response_model=Healthz, summary="The daemon itself is alive")
    async def get_healthz() -> Healthz:
        doc = publisher.document
        return Healthz(
            status="ok",
            pid=os.getpid(),
            started_at=doc.daemon.started_at,
            uptime_s=round((utc_now() - doc.daemon.started_at).total_seconds(), 3),
            generated_at=doc.generated_at,
            subscribers=publisher.subscriber_count,
        )

    return app


async def _event_stream(
    publisher: StatusPublisher, *, snapshot: bool, heartbeat_s: float
) -> AsyncIterator[bytes]:
    """Frames for one SSE client; ends when the publisher closes or the client goes away."""
    sub = publisher.subscribe()  # before the snapshot, so no change falls between the two
    try:
        # A first frame at once: clients (and proxies) see the stream is open.
        yield b": connected\n\n"
        if snapshot:
            for current in publisher.snapshot_events():
                yield sse_frame(current)
        while True:
            try:
                async with asyncio.timeout(heartbeat_s):
                    event = await sub.get()
            except TimeoutError:
                yield HEARTBEAT_FRAME
                continue
            if event is None:
                return
            yield sse_frame(event)
    finally:
        publisher.unsubscribe(sub)
