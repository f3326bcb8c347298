"""Serve an ASGI app with uvicorn inside the daemon's own event loop.

The daemon owns the loop, the signals and the logging, so uvicorn gets none of them: the
listening socket is bound here (a bind failure is a ``GpumgrError``, not uvicorn's
``sys.exit``; port 0 yields the port actually bound), uvicorn's signal capture is switched off
(the daemon handles SIGTERM and stops servers itself), and ``log_config=None`` leaves logging to
structlog's set-up. The same class serves the TCP status app and, later, the control app on a
unix socket (mode 0660).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
import uvicorn

from gpumgr.errors import GpumgrError, InputError

log = structlog.get_logger(__name__)

DEFAULT_GRACEFUL_TIMEOUT_S = 2.0
"""Streams still open after this long at shutdown (an SSE client the publisher did not end) are
cancelled, so a stop is bounded."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as in ``gpumgr.yaml``'s ``listen``."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InputError(f"listen: expected host:port, e.g. 127.0.0.1:9400 (got {listen!r})")
    return host.strip("[]"), int(port_text)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The daemon's loop owns SIGTERM/SIGINT; uvicorn must neither install handlers nor
        # re-raise captured signals when it returns.
        yield


class ApiServer:
    """One ASGI app on one listening socket, run as a task of the current loop."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        *,
        name: str = "status",
        graceful_timeout_s: float = DEFAULT_GRACEFUL_TIMEOUT_S,
    ) -> None:
        self.name = name
        self._sock = sock
        self._unix_path = Path(sock.getsockname()) if sock.family == socket.AF_UNIX else None
        self._address = self._format_address()
        config = uvicorn.Config(
            app,
            log_config=None,
            lifespan="on",
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=max(1, round(graceful_timeout_s)),
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def tcp(cls, app: Any, host: str = "127.0.0.1", port: int = 9400, **kw: Any) -> ApiServer:
        """Bind ``host:port`` now (port 0: any free port, see ``port``)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
        # with proto 0 every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            raise GpumgrError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return cls(app, sock, **kw)

    @classmethod
    def unix(cls, app: Any, path: Path, mode: int = 0o660, **kw: Any) -> ApiServer:
        """Bind a unix socket at ``path`` with ``mode`` (a stale socket file is replaced)."""
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise GpumgrError(f"cannot listen on {path}: exists and is not a socket")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o777 & ~mode)  # never world-accessible, not even briefly
            try:
                sock.bind(str(path))
            finally:
                os.umask(old_umask)
            os.chmod(path, mode)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise GpumgrError(f"cannot listen on {path}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return cls(app, sock, **kw)

    @property
    def port(self) -> int | None:
        """The TCP port actually bound (None for a unix socket)."""
        if self._unix_path is not None:
            return None
        return int(self._address.rsplit(":", 1)[1])

    @property
    def address(self) -> str:
        """``host:port`` or the socket path, for logs and messages."""
        return self._address

    def _format_address(self) -> str:
        name = self._sock.getsockname()
        if self._sock.family == socket.AF_UNIX:
            return str(name)
        host = name[0]
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start serving; returns once the app's startup ran and the socket accepts."""
        if self._task is not None:
            raise RuntimeError("server already started")
        self._task = asyncio.create_task(self._serve(), name=f"gpumgr-api-{self.name}")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises the failure
                raise GpumgrError(f"{self.name} server stopped during startup")
            await asyncio.sleep(0.01)
        log.info("api.listening", server=self.name, address=self.address)

    async def stop(self) -> None:
        """Stop accepting, let responses finish (bounded), run the app's shutdown."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._sock.close()
            if self._unix_path is not None:
                with contextlib.suppress(OSError):
                    self._unix_path.unlink(missing_ok=True)
            log.info("api.stopped", server=self.name)

    async def _serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._sock])
        except SystemExit as exc:  # uvicorn exits on a failed lifespan startup
            raise GpumgrError(f"{self.name} server failed to start (exit {exc.code})") from None

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
