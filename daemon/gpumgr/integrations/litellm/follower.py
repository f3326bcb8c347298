"""Keeps one daemon's status current: follows ``/v1/events``, polls ``/v1/status`` when it cannot.

One ``StatusFollower`` per status URL, run as a background task on the router's event loop. It
reads the whole document first (``GET /v1/status``), then follows the event stream, applying each
``backend`` event to its copy; any frame (events, the ``: heartbeat`` comment the daemon sends at
least every 2 s) proves the daemon alive and refreshes ``last_seen``. When the stream cannot be
opened or breaks, it polls the document every ``poll_s`` and tries the stream again after each
successful poll. While the daemon says it is not yet informed (adoption or the first probe round
not done), each heartbeat also re-reads the document, since those flags travel only there.

The follower never raises out of ``run``: every failure is a reason to retry, logged once per
kind until it recovers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx2

from gpumgr.integrations.litellm.status_view import (
    HostStatus,
    MalformedStatus,
    parse_backend,
    parse_document,
)

log = logging.getLogger("gpumgr.integrations.litellm")


def events_url(status_url: str) -> str:
    """``…/v1/status`` → ``…/v1/events`` (the same daemon's stream)."""
    base = status_url.rstrip("/")
    if base.endswith("/status"):
        return base[: -len("/status")] + "/events"
    return base + "/events"


class StatusFollower:
    def __init__(
        self,
        url: str,
        *,
        on_change: Callable[[], None],
        poll_s: float = 1.0,
        timeout_s: float = 2.0,
        stream_idle_s: float = 6.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.events_url = events_url(url)
        self.status: HostStatus | None = None
        self.last_seen: float | None = None
        """``clock()`` when the daemon was last heard from (a document or any SSE frame)."""
        self.streaming = False
        self._on_change = on_change
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._stream_idle_s = stream_idle_s
        self._clock = clock
        self._failing: str | None = None

    # -- state ------------------------------------------------------------------------------
    def _set(self, status: HostStatus) -> None:
        changed = status != self.status
        self.status = status
        self.last_seen = self._clock()
        if self._failing is not None:
            log.info("gpumgr.status.recovered url=%s", self.url)
            self._failing = None
        if changed:
            self._on_change()

    def _failed(self, kind: str, exc: BaseException) -> None:
        if self._failing != kind:
            log.warning("gpumgr.status.unreachable url=%s how=%s error=%r", self.url, kind, exc)
            self._failing = kind

    # -- I/O --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow forever (until cancelled)."""
        timeout = httpx2.Timeout(self._timeout_s, read=self._stream_idle_s)
        async with httpx2.AsyncClient(timeout=timeout, trust_env=False) as client:
            while True:
                if await self.poll_once(client):
                    await self._follow(client)
                await asyncio.sleep(self._poll_s)

    async def poll_once(self, client: httpx2.AsyncClient) -> bool:
        """Read the whole document once; False when the daemon did not give one."""
        try:
            r = await client.get(self.url, timeout=self._timeout_s)
            r.raise_for_status()
            self._set(parse_document(r.content))
            return True
        except (httpx2.HTTPError, MalformedStatus, OSError) as exc:
            self._failed("poll", exc)
            return False

    async def _follow(self, client: httpx2.AsyncClient) -> None:
        """Apply the event stream until it ends or fails."""
        event = ""
        seq: int | None = None
        data: list[str] = []
        try:
            async with client.stream(
                "GET", self.events_url, headers={"Accept": "text/event-stream"}
            ) as r:
                r.raise_for_status()
                self.streaming = True
                async for line in r.aiter_lines():
                    self.last_seen = self._clock()
                    if line == "":
                        if event in ("", "backend") and data:
                            self._apply("\n".join(data), seq)
                        event, seq, data = "", None, []
                        continue
                    if line.startswith(":"):
                        if self.status is not None and not self.status.informed:
                            await self.poll_once(client)
                        continue
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        event = value
                    elif field == "id":
                        head = value.split("-", 1)[0]  # "N" or a snapshot frame's "N-part"
                        seq = int(head) if head.isdigit() else None
                    elif field == "data":
                        data.append(value)
        except (httpx2.HTTPError, OSError) as exc:
            self._failed("events", exc)
        finally:
            self.streaming = False

    def _apply(self, payload: str, seq: int | None) -> None:
        try:
            backend = parse_backend(payload)
        except MalformedStatus as exc:
            log.warning("gpumgr.status.malformed_event url=%s error=%s", self.url, exc)
            return
        base = self.status if self.status is not None else HostStatus(backends={})
        self._set(base.with_backend(backend, seq))
