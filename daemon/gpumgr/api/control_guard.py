"""The gate in front of the control routes: token and body size, checked before any body byte.

FastAPI reads (and parses) a request's whole body before it runs a route's dependencies, so a
token check written as a dependency comes too late: an unauthenticated client could make the
daemon buffer a body of any size (256 MiB raised the RSS by ~500 MiB, and the answer was 422).
This ASGI middleware runs first, on the request's headers only:

- with a token (the TCP listener): no ``Authorization: Bearer <token>`` → 401, compared in
  constant time;
- a ``Content-Length`` that is not a number or is over ``max_body`` → 413;
- a body without a length (chunked) is read here up to ``max_body`` bytes and handed on; one
  byte more → 413.

A refusal carries ``Connection: close``, so the server drops the connection instead of reading
(and discarding) the rest of a large body. Requests outside ``prefix`` pass untouched.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ControlGuard:
    """ASGI middleware: refuse a control request on its headers before reading its body."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int,
                 prefix: str = "/v1/control") -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode() if token is not None else None
        self._max_body = max_body
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _under(scope.get("path", ""), self._prefix):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if self._expected is not None:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await _refuse(send, 401, "control calls need the bearer token",
                              [(b"www-authenticate", b"Bearer")])
                return
        too_big = f"request body over {self._max_body} bytes"
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self._max_body:
                await _refuse(send, 413, too_big)
                return
            await self.app(scope, receive, send)
            return
        if headers.get(b"transfer-encoding") is None:
            await self.app(scope, receive, send)  # no body at all
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self._max_body:
                await _refuse(send, 413, too_big)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """Header names lower-cased (ASGI already does); the first value of a repeated header."""
    out: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", []):
        out.setdefault(bytes(name).lower(), bytes(value))
    return out


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, when it comes

    return again


async def _refuse(send: Send, status: int, detail: str,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"), *(extra or [])],
    })
    await send({"type": "http.response.body", "body": payload, "more_body": False})
