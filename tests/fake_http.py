"""A real HTTP server on 127.0.0.1 for tests that play an upstream (vLLM, llama.cpp, a cloud).

``JsonServer`` listens on a port the kernel picks, records every request it receives and answers
each with what its ``respond`` callable returns: a ``Reply`` (a body that is not ``bytes`` is
sent as JSON), or ``None`` to close the connection without answering. Fakes subclass it and pass
a bound method; fixtures use it as a context manager, so the server always stops.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Message[str, str]
    """Case-insensitive: ``request.headers.get("Authorization", "")``."""
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    body: object = b""
    """``bytes`` as they are; anything else as JSON."""
    content_type: str | None = None
    """Defaults to ``application/json`` for a JSON body, ``text/plain`` for bytes."""

    def encode(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, self.content_type or "text/plain"
        return json.dumps(self.body).encode(), self.content_type or "application/json"


Respond = Callable[[Request], Reply | None]


class JsonServer:
    """A ``ThreadingHTTPServer`` on 127.0.0.1:0 served from a daemon thread."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.received: list[Request] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, self.path, self.headers, self.rfile.read(length))
                server.received.append(request)
                reply = server.respond(request)
                if reply is None:
                    return  # the connection closes unanswered
                body, content_type = reply.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815 - http.server's naming

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
