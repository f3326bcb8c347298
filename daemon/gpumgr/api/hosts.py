"""Refuse requests whose ``Host`` is not this machine: DNS rebinding protection for every listener.

A web page on ``evil.example`` whose name is re-pointed at 127.0.0.1 can make a browser send
requests to gpumgr's loopback listener; the browser still sends ``Host: evil.example``. So an
HTTP (or WebSocket) request is served only when its ``Host`` names:

- a loopback name or address (``localhost``, ``127.0.0.1``, ``[::1]`` …, any port);
- the configured listen host (``gpumgr.yaml``'s ``listen``), and any ``extra`` names given;
- the IP address the connection arrived on (what a client that dialled an IP literal sends);
- when the listener is bound to a wildcard (``0.0.0.0``, ``::``), also any IP literal and this
  machine's own host names: a rebinding attack needs a DNS name, never an IP literal.

Anything else gets ``421 Misdirected Request`` with a JSON ``detail``, before the app sees it.
A request without a ``Host`` header (HTTP/1.0 tools) is served: browsers always send one.

Usage: ``app.add_middleware(AllowedHosts, listen_host="127.0.0.1")`` or
``AllowedHosts(app, listen_host=...)`` around any ASGI app (the status app, the control app).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from gpumgr.config.hosts import is_loopback

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MISDIRECTED = 421


def host_name(header: str) -> str:
    """The host part of a ``Host`` header value, lower-cased, without port or IPv6 brackets."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _own_names() -> set[str]:
    names = {socket.gethostname()}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    return {n.lower().rstrip(".") for n in names if n}


class HostPolicy:
    """Which ``Host`` values a listener accepts (pure; see the module doc)."""

    def __init__(self, listen_host: str | None = None, extra: Iterable[str] = (),
                 own_names: Iterable[str] | None = None) -> None:
        listen = host_name(listen_host) if listen_host else ""
        self.wildcard = bool(listen) and _is_wildcard(listen)
        self.names = {host_name(h) for h in extra if h}
        if listen and not self.wildcard:
            self.names.add(listen)
        if self.wildcard:
            self.names |= set(_own_names() if own_names is None else own_names)

    def allows(self, header: str | None, local_address: str | None = None) -> bool:
        """``local_address``: the address the connection arrived on (ASGI ``scope["server"]``);
        a ``Host`` naming that IP literal is the address the client dialled, never a rebinding."""
        if header is None:
            return True
        host = host_name(header)
        if not host:
            return False
        if is_loopback(host) or host in self.names:
            return True
        if local_address and _is_ip(host) and host == host_name(local_address):
            return True
        return self.wildcard and _is_ip(host)


class AllowedHosts:
    """ASGI middleware applying a ``HostPolicy`` to http and websocket requests."""

    def __init__(self, app: ASGIApp, listen_host: str | None = None, extra: Iterable[str] = (),
                 policy: HostPolicy | None = None) -> None:
        self.app = app
        self.policy = policy or HostPolicy(listen_host, extra)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header: str | None = None
        for key, value in scope.get("headers") or ():
            if key == b"host":
                header = value.decode("latin-1")
                break
        server = scope.get("server")
        if server and server[1] is None:  # a unix socket: no browser can reach it, no rebinding
            await self.app(scope, receive, send)
            return
        local = str(server[0]) if server else None
        if self.policy.allows(header, local):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(
            {"detail": f"Host {header!r} is not this machine's listener (DNS rebinding guard)"}
        ).encode()
        await send({"type": "http.response.start", "status": MISDIRECTED,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


__all__ = ["AllowedHosts", "HostPolicy", "host_name"]
