"""The read-only status app on a real uvicorn server (127.0.0.1, port chosen at run time)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest

from gpumgr.sse import SseComment, SseMessage, SseParser
from gpumgr.api.server import ApiServer, parse_listen
from gpumgr.api.status_app import create_status_app
from gpumgr.errors import GpumgrError, InputError
from gpumgr.status.document import BackendStatus, DaemonInfo, StatusDocument
from gpumgr.status.publisher import StatusPublisher

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 1, 2, tzinfo=UTC)


def _publisher(tmp_path: Path) -> StatusPublisher:
    pub = StatusPublisher(
        daemon=DaemonInfo(pid=os.getpid(), started_at=T0, simulated=True),
        status_path=tmp_path / "status.json",
    )
    pub.set_backends(
        [
            BackendStatus(
                name="qwen-7b", type="vllm", base_url="http://127.0.0.1:8001", state="starting",
                managed=True, models=["qwen-coder-vllm"], port=8001,
            ),
            BackendStatus(name="ollama", type="ollama", state="up", models=["llama3:8b"]),
        ]
    )
    return pub


@contextlib.asynccontextmanager
async def serving(pub: StatusPublisher, heartbeat_s: float = 15.0) -> AsyncIterator[str]:
    server = ApiServer.tcp(create_status_app(pub, heartbeat_s=heartbeat_s), "127.0.0.1", 0)
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        pub.close()
        await server.stop()


@dataclass
class SseLog:
    events: list[dict[str, str]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


async def read_sse(
    client: httpx2.AsyncClient, url: str, log: SseLog, until: object = None
) -> None:
    """Parse an SSE stream into ``log`` until it ends or ``until(log)`` is true."""
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        parser = SseParser()
        async for chunk in response.aiter_bytes():
            for item in parser.feed(chunk):
                if isinstance(item, SseComment):
                    log.comments.append(item.text)
                elif isinstance(item, SseMessage):
                    log.events.append({"event": item.event, "data": item.data,
                                       **({"id": item.id} if item.id is not None else {})})
                if callable(until) and until(log):
                    return


async def test_status_endpoint_serves_the_publishers_document(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    async with serving(pub) as base, httpx2.AsyncClient(base_url=base) as client:
        pub.update_backend("qwen-7b", state="up", pid=4242)
        response = await client.get("/v1/status")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        doc = StatusDocument.model_validate_json(response.content)
        assert doc == pub.document
        assert doc.models["qwen-coder-vllm"].available is True
        assert pub.flush(5)
        assert json.loads((tmp_path / "status.json").read_bytes()) == response.json()


async def test_one_backend_by_name_and_404_json_for_an_unknown_one(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    async with serving(pub) as base, httpx2.AsyncClient(base_url=base) as client:
        found = await client.get("/v1/backends/ollama")
        assert found.status_code == 200
        assert found.json()["state"] == "up" and found.json()["available"] is True
        missing = await client.get("/v1/backends/nope")
        assert missing.status_code == 404
        assert missing.json() == {"detail": "unknown backend: nope"}


async def test_every_backend_the_status_lists_is_reachable_by_name(tmp_path: Path) -> None:
    """Names valid in providers.yaml (letters, digits, '.', '_', '-') are plain path segments:
    each backend the document lists answers on ``/v1/backends/{name}``; a traversal does not."""
    from gpumgr.config import load_config

    cfg = tmp_path / "config"
    cfg.mkdir()
    names = ["qwen2.5-coder_7b", "a.b", "Q-14B", "x_"]
    (cfg / "providers.yaml").write_text("providers:\n" + "".join(
        f"  {n}:\n    type: ollama\n    base_url: http://127.0.0.1:11434\n" for n in names))
    config = load_config(cfg)
    pub = StatusPublisher(daemon=DaemonInfo(pid=os.getpid(), started_at=T0))
    pub.set_backends([BackendStatus(name=n, type="ollama") for n in config.providers])
    async with serving(pub) as base, httpx2.AsyncClient(base_url=base) as client:
        for b in pub.document.backends:
            found = await client.get(f"/v1/backends/{b.name}")
            assert found.status_code == 200 and found.json()["name"] == b.name
        assert (await client.get("/v1/backends/..%2Fstatus")).status_code == 404


async def test_events_push_each_state_change_with_the_new_backend_object(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    async with serving(pub) as base, httpx2.AsyncClient(base_url=base) as client:
        log = SseLog()

        def got_down(log: SseLog) -> bool:
            return any('"state":"down"' in e.get("data", "") for e in log.events)

        reader = asyncio.create_task(read_sse(client, "/v1/events?snapshot=false", log, got_down))
        async with asyncio.timeout(5):
            while pub.subscriber_count == 0:
                await asyncio.sleep(0.01)
        pub.update_backend("qwen-7b", last_check=T0, latency_ms=1.0)  # a probe: no event
        changed_at = time.monotonic()
        pub.update_backend("qwen-7b", state="down", detail="process exited (SIGKILL)")
        async with asyncio.timeout(5):
            await reader
        delay_s = time.monotonic() - changed_at
        assert delay_s < 3.0  # pushed at once: no frame would come before the 15 s heartbeat
        assert len(log.events) == 1, "probe timings alone are not events"
        (event,) = log.events
        assert event["event"] == "backend" and event["id"] == f"{pub.epoch}:{pub.seq}"
        backend = BackendStatus.model_validate_json(event["data"])
        assert backend.name == "qwen-7b" and backend.available is False
        assert backend.detail == "process exited (SIGKILL)"


async def test_events_open_with_every_backends_current_state(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    async with serving(pub) as base, httpx2.AsyncClient(base_url=base) as client:
        log = SseLog()
        async with asyncio.timeout(5):
            await read_sse(client, "/v1/events", log, lambda log: len(log.events) == 2)
        names = [json.loads(e["data"])["name"] for e in log.events]
        assert names == ["qwen-7b", "ollama"]


async def test_an_idle_event_stream_gets_heartbeat_comments(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    async with serving(pub, heartbeat_s=0.2) as base, httpx2.AsyncClient(base_url=base) as c:
        log = SseLog()
        async with asyncio.timeout(5):
            await read_sse(
                c, "/v1/events?snapshot=false", log, lambda log: log.comments.count("heartbeat") >= 2
            )
        assert log.events == []


async def test_metrics_and_healthz(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    async with serving(pub) as base, httpx2.AsyncClient(base_url=base) as client:
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'gpumgr_backend_up{backend="ollama",type="ollama"} 1.0' in metrics.text
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok" and health.json()["pid"] == os.getpid()


async def test_openapi_schema_documents_the_status_contract(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    async with serving(pub) as base, httpx2.AsyncClient(base_url=base) as client:
        schema = (await client.get("/openapi.json")).json()
    status_schema = schema["paths"]["/v1/status"]["get"]["responses"]["200"]["content"]
    ref = status_schema["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    components = schema["components"]["schemas"]
    assert set(components[ref]["properties"]) >= {
        "version", "generated_at", "daemon", "gpus", "backends", "models"
    }
    backend_schema = next(v for k, v in components.items() if k.startswith("BackendStatus"))
    assert {"state", "available", "busy", "latency_ms"} <= set(backend_schema["properties"])
    assert "404" in schema["paths"]["/v1/backends/{name}"]["get"]["responses"]
    assert "text/event-stream" in schema["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]


async def test_stop_ends_open_event_streams_promptly(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    server = ApiServer.tcp(create_status_app(pub), "127.0.0.1", 0)
    await server.start()
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        log = SseLog()
        reader = asyncio.create_task(read_sse(client, "/v1/events", log))
        async with asyncio.timeout(5):
            while pub.subscriber_count == 0:
                await asyncio.sleep(0.01)
        started = time.monotonic()
        pub.close()
        await server.stop()
        async with asyncio.timeout(2):
            await reader  # the stream ended cleanly, from the server's side
        assert time.monotonic() - started < 1.0
    with pytest.raises(httpx2.ConnectError):
        async with httpx2.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{server.port}/healthz")


async def test_stop_is_bounded_even_with_a_stream_nobody_ended(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    server = ApiServer.tcp(create_status_app(pub), "127.0.0.1", 0, graceful_timeout_s=1)
    await server.start()
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        reader = asyncio.create_task(read_sse(client, "/v1/events", SseLog()))
        async with asyncio.timeout(5):
            while pub.subscriber_count == 0:
                await asyncio.sleep(0.01)
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 3.0
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
    pub.close()


async def test_a_busy_port_is_a_gpumgr_error_naming_the_address(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(GpumgrError, match=f"127.0.0.1:{port}"):
            ApiServer.tcp(create_status_app(_publisher(tmp_path)), "127.0.0.1", port)
    finally:
        holder.close()


async def test_the_same_server_serves_an_app_on_a_unix_socket_with_mode_0660(
    tmp_path: Path,
) -> None:
    pub = _publisher(tmp_path)
    path = tmp_path / "control.sock"
    server = ApiServer.unix(create_status_app(pub), path)
    await server.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        transport = httpx2.AsyncHTTPTransport(uds=str(path))
        async with httpx2.AsyncClient(transport=transport, base_url="http://gpumgr") as client:
            assert (await client.get("/healthz")).status_code == 200
    finally:
        pub.close()
        await server.stop()
    assert not path.exists()


def test_listen_setting_parses_host_and_port() -> None:
    assert parse_listen("127.0.0.1:9400") == ("127.0.0.1", 9400)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("9400", "localhost:", "host:99999", "host:http"):
        with pytest.raises(InputError):
            parse_listen(bad)


async def test_keep_alive_requests_are_not_held_back_by_delayed_acks(tmp_path: Path) -> None:
    # Without TCP_NODELAY on accepted sockets each response on a reused connection waits for
    # the client's delayed ACK: ~40 ms instead of ~1 ms.
    pub = _publisher(tmp_path)
    async with serving(pub) as base, httpx2.AsyncClient(base_url=base) as client:
        await client.get("/v1/status")
        timings_s = []
        for _ in range(15):
            started = time.perf_counter()
            assert (await client.get("/v1/status")).status_code == 200
            timings_s.append(time.perf_counter() - started)
        # Without it every one of them takes >= 40 ms (measured: 43-46 ms, fastest 43); with it
        # ~1 ms. A loaded machine only adds time, so the fastest few are what the socket allows.
        assert sorted(timings_s)[2] < 0.025, timings_s
