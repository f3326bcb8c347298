"""Under a burst of state changes: 200 concurrent readers of /v1/status, 20 SSE subscribers,
and a reader of status.json in another process are all served, and none sees a torn document."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest

from gpumgr.sse import SseMessage, SseParser
from gpumgr.api.server import ApiServer
from gpumgr.api.status_app import create_status_app
from gpumgr.backend_state import BackendState
from gpumgr.status.document import BackendStatus, DaemonInfo, StatusDocument
from gpumgr.status.publisher import StatusPublisher

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

READERS = 200
REQUESTS_PER_READER = 3
SUBSCRIBERS = 20
BACKENDS = 8
CHANGES = 400

# Re-reads status.json as fast as it can until told to stop; reports what it saw.
FILE_READER = r"""
import json, sys, pathlib
path, stop = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
reads = failures = 0
seen = set()
print("ready", flush=True)
while not stop.exists():
    try:
        doc = json.loads(path.read_bytes())
        seen.add(doc["generated_at"])
        reads += 1
    except Exception as exc:
        failures += 1
        print("FAIL", repr(exc), file=sys.stderr)
print(json.dumps({"reads": reads, "failures": failures, "versions": len(seen)}))
"""


def _backends() -> list[BackendStatus]:
    return [
        BackendStatus(name=f"b{i}", type="vllm", state="starting", models=[f"m{i}"], port=8000 + i)
        for i in range(BACKENDS)
    ]


async def _subscriber(base: str, ready: asyncio.Event, latest: dict[str, str]) -> int:
    """Follows /v1/events, keeping each backend's newest data; returns the number of events."""
    count = 0
    async with httpx2.AsyncClient(base_url=base, timeout=30) as client:
        async with client.stream("GET", "/v1/events") as response:
            assert response.status_code == 200
            ready.set()
            parser = SseParser()
            async for chunk in response.aiter_bytes():
                for item in parser.feed(chunk):
                    if isinstance(item, SseMessage):
                        latest[json.loads(item.data)["name"]] = item.data
                        count += 1
    return count


async def _reader(client: httpx2.AsyncClient, start: asyncio.Event) -> list[StatusDocument]:
    await start.wait()
    docs = []
    for _ in range(REQUESTS_PER_READER):
        response = await client.get("/v1/status")
        assert response.status_code == 200
        docs.append(StatusDocument.model_validate_json(response.content))
    return docs


async def test_readers_subscribers_and_file_reader_survive_a_burst(tmp_path: Path) -> None:
    status_path = tmp_path / "status.json"
    stop_file = tmp_path / "stop"
    pub = StatusPublisher(
        daemon=DaemonInfo(pid=os.getpid(), started_at=datetime.now(UTC)), status_path=status_path
    )
    pub.set_backends(_backends())
    assert pub.flush(5)
    server = ApiServer.tcp(create_status_app(pub), "127.0.0.1", 0)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    file_reader = subprocess.Popen(
        [sys.executable, "-c", FILE_READER, str(status_path), str(stop_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    subscribers: list[asyncio.Task[int]] = []
    try:
        assert file_reader.stdout is not None
        assert file_reader.stdout.readline().strip() == "ready"

        latest: list[dict[str, str]] = [{} for _ in range(SUBSCRIBERS)]
        readies = [asyncio.Event() for _ in range(SUBSCRIBERS)]
        subscribers = [
            asyncio.create_task(_subscriber(base, readies[i], latest[i]))
            for i in range(SUBSCRIBERS)
        ]
        async with asyncio.timeout(20):
            while pub.subscriber_count < SUBSCRIBERS:
                await asyncio.sleep(0.01)

        start = asyncio.Event()
        limits = httpx2.Limits(max_connections=READERS, max_keepalive_connections=READERS)
        async with httpx2.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
            readers = [asyncio.create_task(_reader(client, start)) for _ in range(READERS)]

            async def burst() -> None:
                states = [BackendState.UP, BackendState.DOWN, BackendState.RESTARTING]
                for i in range(CHANGES):
                    pub.update_backend(f"b{i % BACKENDS}", state=states[i % 3], restarts=i)
                    await asyncio.sleep(0)  # let the server interleave, as probes would
                for b in range(BACKENDS):
                    pub.update_backend(f"b{b}", state=BackendState.UP, detail="final")

            start.set()
            async with asyncio.timeout(60):
                _, results = await asyncio.gather(burst(), asyncio.gather(*readers))
        docs = [doc for reader_docs in results for doc in reader_docs]
        assert len(docs) == READERS * REQUESTS_PER_READER

        final = {b.name: b.model_dump_json() for b in pub.document.backends}
        async with asyncio.timeout(20):
            while any(seen != final for seen in latest):
                await asyncio.sleep(0.05)

        pub.close()  # ends every stream: all subscribers return normally
        async with asyncio.timeout(10):
            counts = await asyncio.gather(*subscribers)
        assert all(n >= BACKENDS for n in counts)

        assert pub.flush(5)
        stop_file.write_text("")
        out, err = file_reader.communicate(timeout=20)
        report = json.loads(out.strip().splitlines()[-1])
        assert report["failures"] == 0, err
        assert report["reads"] > 0 and report["versions"] >= 2, report
        assert json.loads(status_path.read_bytes()) == json.loads(pub.document_json)
    finally:
        stop_file.touch()
        if file_reader.poll() is None:
            file_reader.kill()
            file_reader.wait()
        pub.close()
        for task in subscribers:
            task.cancel()
        await asyncio.gather(*subscribers, return_exceptions=True)
        await server.stop()
