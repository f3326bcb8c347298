"""A minimal HTTP/1.1 server on asyncio streams: keep-alive, JSON bodies, chunked streaming.

Just enough for the simulated engine: a web framework would cost more import time than the
whole engine, and tests start many engines. Request bodies need a Content-Length (what HTTP
clients send for JSON); responses carry one, or are sent chunked when streamed (SSE).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}  # fmt: skip


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, payload: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(payload).encode())


@dataclass
class StreamingResponse:
    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "text/event-stream"


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection, or None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest(400, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        raise BadRequest(400, "chunked request bodies are not supported")
    length = int(headers.get("content-length", "0") or 0)
    if length > MAX_BODY_BYTES:
        raise BadRequest(413, "request body too large")
    body = await reader.readexactly(length) if length else b""
    url = urlsplit(target)
    return Request(method.upper(), url.path, dict(parse_qsl(url.query)), headers, body)


def _head(status: int, content_type: str, extra: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"content-type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def write_response(
    writer: asyncio.StreamWriter, resp: Response | StreamingResponse, keep_alive: bool
) -> None:
    conn = {"connection": "keep-alive" if keep_alive else "close"}
    if isinstance(resp, Response):
        headers = {**resp.headers, "content-length": str(len(resp.body)), **conn}
        writer.write(_head(resp.status, resp.content_type, headers) + resp.body)
        await writer.drain()
        return
    headers = {"transfer-encoding": "chunked", "cache-control": "no-cache", **conn}
    writer.write(_head(resp.status, resp.content_type, headers))
    async for chunk in resp.chunks:
        if chunk:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def connection_handler(
    handler: Handler, open_writers: set[asyncio.StreamWriter]
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """An ``asyncio.start_server`` callback serving requests on one connection until it closes.

    Open connections are kept in ``open_writers`` so that shutdown can close them (Python 3.11's
    ``Server.close()`` leaves established connections alone).
    """

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_writers.add(writer)
        try:
            while True:
                try:
                    req = await read_request(reader)
                except BadRequest as exc:
                    body = Response.of_json({"detail": str(exc)}, exc.status)
                    await write_response(writer, body, keep_alive=False)
                    return
                if req is None:
                    return
                keep_alive = req.headers.get("connection", "").lower() != "close"
                resp = await handler(req)
                await write_response(writer, resp, keep_alive)
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # Shutdown cancels a connection still streaming: end it quietly. A cancelled
            # connection task makes asyncio's stream callback log a traceback, and a normal
            # stop (SIGTERM) must leave none in the engine's log.
            return
        finally:
            open_writers.discard(writer)
            writer.close()

    return serve
