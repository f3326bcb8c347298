"""Keeps one daemon's status current: follows ``/v1/events``, polls ``/v1/status`` when it cannot.

One ``StatusFollower`` per status URL, run as a background task on the router's event loop. It
reads the whole document first (``GET /v1/status``), then follows the event stream, applying each
``backend`` event to its copy; any frame (events, the ``: heartbeat`` comment the daemon sends at
least every 2 s) proves the daemon alive and refreshes ``last_seen``. When the stream cannot be
opened or breaks, it polls the document every ``poll_s`` and tries the stream again after each
successful poll. While the daemon says it is not yet informed (adoption or the first probe round
not done), each heartbeat also re-reads the document, since those flags travel only there.

The follower never raises out of ``run``: every failure is a reason to retry, logged once per
kind until it recovers. It must survive any byte sequence a status URL sends: the stream goes
through ``gpumgr.sse.SseParser`` (bounded lines and messages; an over-long one is dropped and the
parser resyncs at the next blank line), a document is read up to ``MAX_DOCUMENT_BYTES``, every
parse error drops that frame or document and keeps the last good view, and any other failure
(even a bug) is caught at the top of ``run``, which backs off (``poll_s`` doubling up to
``backoff_cap_s``) and reconnects.

Ids are ``epoch:seq`` (``gpumgr.sse.parse_event_id``; the older bare ``seq`` still reads). Within
one epoch an event older than the document held is a replay and is skipped; an event of a new
epoch is a new daemon (its ``seq`` started again): the follower re-reads that daemon's document,
then applies the event.
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
from gpumgr.sse import SseComment, SseError, SseMessage, SseParser, parse_event_id

log = logging.getLogger("gpumgr.integrations.litellm")

MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
"""A status document larger than this is not one (hundreds of backends fit in a few hundred KiB)."""
MAX_EVENT_BYTES = 1024 * 1024
"""One backend event's data; a line is bounded by the same figure."""
DEFAULT_BACKOFF_CAP_S = 5.0


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
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.events_url = events_url(url)
        self.status: HostStatus | None = None
        self.last_seen: float | None = None
        """``clock()`` when the daemon was last heard from (a document or any SSE frame)."""
        self.streaming = False
        self.dropped = 0
        """Frames and documents dropped as malformed (each one a resync, never an end)."""
        self._on_change = on_change
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._stream_idle_s = stream_idle_s
        self._backoff_cap_s = max(backoff_cap_s, poll_s)
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

    def _failed(self, kind: str, exc: BaseException | str) -> None:
        if self._failing != kind:
            log.warning("gpumgr.status.unreachable url=%s how=%s error=%r", self.url, kind,
                        _short(exc))
            self._failing = kind

    def _backoff_s(self, failures: int) -> float:
        """``poll_s`` after a success; doubling with each failure in a row, up to the cap."""
        if failures <= 0:
            return self._poll_s
        return float(min(self._backoff_cap_s, self._poll_s * 2 ** min(failures, 16)))

    # -- I/O --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow forever (until cancelled); nothing but cancellation leaves this loop."""
        failures = 0
        while True:
            try:
                timeout = httpx2.Timeout(self._timeout_s, read=self._stream_idle_s)
                async with httpx2.AsyncClient(timeout=timeout, trust_env=False) as client:
                    while True:
                        if await self.poll_once(client):
                            failures = 0
                            await self._follow(client)
                        else:
                            failures += 1
                        await asyncio.sleep(self._backoff_s(failures))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug must not end the follower for good
                failures += 1
                self._failed("internal", exc)
                await asyncio.sleep(self._backoff_s(failures))

    async def poll_once(self, client: httpx2.AsyncClient) -> bool:
        """Read the whole document once; False when the daemon did not give one."""
        try:
            async with client.stream("GET", self.url, timeout=self._timeout_s) as r:
                r.raise_for_status()
                body = bytearray()
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise MalformedStatus(f"a document over {MAX_DOCUMENT_BYTES} bytes")
            self._set(parse_document(bytes(body)))
            return True
        except asyncio.CancelledError:
            raise
        except MalformedStatus as exc:
            self.dropped += 1
            self._failed("poll", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - any failure is a reason to poll again
            self._failed("poll", exc)
            return False

    async def _follow(self, client: httpx2.AsyncClient) -> None:
        """Apply the event stream until it ends or fails."""
        parser = SseParser(max_line=MAX_EVENT_BYTES + 64, max_data=MAX_EVENT_BYTES)
        try:
            async with client.stream(
                "GET", self.events_url, headers={"Accept": "text/event-stream"}
            ) as r:
                r.raise_for_status()
                self.streaming = True
                async for chunk in r.aiter_bytes():
                    for item in parser.feed(chunk):
                        await self._handle(item, client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken stream: poll, then follow again
            self._failed("events", exc)
        finally:
            self.streaming = False

    async def _handle(self, item: SseMessage | SseComment | SseError,
                      client: httpx2.AsyncClient) -> None:
        if isinstance(item, SseError):
            self.dropped += 1
            log.warning("gpumgr.status.malformed_event url=%s error=%s", self.url, item.reason)
            return
        self.last_seen = self._clock()
        if isinstance(item, SseComment):
            if self.status is not None and not self.status.informed:
                await self.poll_once(client)
            return
        if item.event in ("message", "backend"):
            await self._apply(item, client)

    async def _apply(self, message: SseMessage, client: httpx2.AsyncClient) -> None:
        try:
            backend = parse_backend(message.data)
        except MalformedStatus as exc:
            self.dropped += 1
            log.warning("gpumgr.status.malformed_event url=%s error=%s", self.url, _short(exc))
            return
        event_id = parse_event_id(message.id)
        base = self.status if self.status is not None else HostStatus(backends={})
        if event_id is None:
            self._set(base.with_backend(backend, None))
            return
        if event_id.epoch and base.epoch and event_id.epoch != base.epoch:
            # A new daemon (its seq started again): take its whole document, then the event.
            await self.poll_once(client)
            base = self.status if self.status is not None else base
        if event_id.epoch == base.epoch and base.seq is not None and event_id.seq < base.seq:
            return  # a replay: the document held already has this change
        self._set(base.with_backend(backend, event_id.seq, event_id.epoch or None))


def _short(exc: BaseException | str, limit: int = 200) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "…"
