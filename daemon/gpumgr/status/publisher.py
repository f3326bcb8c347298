"""The one owner of the current status document.

Health probes, the supervisor and the GPU poller tell the publisher what changed; it builds the
new (immutable) document, stamps ``generated_at``, serialises it once, offers the bytes to the
``status.json`` writer, and fans backend changes out to Server-Sent-Event subscribers. Readers
(HTTP handlers, ``/metrics``) only ever read ``document`` / ``document_json``.

Fan-out never blocks the publisher: each subscriber has a bounded ``asyncio.Queue``; one that
falls behind is not waited for — its queue is dropped and, when it next reads, it is re-synced
with the current state of every backend (the newest state is what a router needs, not the
history it missed).

Everything the publisher stores passes through the ``redact`` hook first (free-text details,
reasons, URLs), so a secret a probe echoes never reaches the file, HTTP, SSE or ``/metrics``.

Mutating methods may be called from the event loop's thread or another thread (a supervisor's
waiter); subscriber queues are only touched on the loop's thread.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict, Unpack

import structlog

from gpumgr.backend_state import BackendState
from gpumgr.status.document import (
    BackendStatus,
    DaemonInfo,
    GpuStatus,
    PolicyStatus,
    StatusDocument,
    utc_now,
)
from gpumgr.status.metrics import StatusMetrics
from gpumgr.status.statusfile import CoalescingFileWriter
from gpumgr.sse import format_event_id

log = structlog.get_logger(__name__)

class BackendChanges(TypedDict, total=False):
    """The fields of a ``BackendStatus`` a caller may change, by name and type: a misspelt
    field fails type checking (and raises at run time) instead of vanishing."""

    state: BackendState | str
    base_url: str | None
    busy: bool
    pid: int | None
    port: int | None
    gpu_memory_utilization: float | None
    restarts: int
    since: datetime | None
    last_check: datetime | None
    latency_ms: float | None
    detail: str | None
    weights_commit: str | None
    unavailable_models: dict[str, str]
    suspect: bool
    progress: float | None
    eta_s: float | None
    vllm_version: str | None
    kv_cache_tokens_planned: int | None
    kv_cache_tokens_actual: int | None
    idle_action_in_s: float | None
    policy: PolicyStatus | None


_CHANGEABLE = frozenset(BackendChanges.__annotations__)


QUIET_FIELDS = frozenset({"last_check", "latency_ms", "progress", "eta_s",
                          "idle_action_in_s", "policy"})
"""Fields that change often without changing what a router does (every probe's timings, a load's
progress): they change the document (and the file) but are not events."""

DEFAULT_QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class BackendEvent:
    """One backend's new state, serialised once for every subscriber."""

    seq: int
    backend: BackendStatus
    data: bytes
    part: int = 0
    """0 for a change; 1..K for the K backends of a snapshot (all of document ``seq``), so that
    every SSE frame has its own id: ``seq`` for a change, ``seq-part`` for a snapshot frame."""
    epoch: str = ""
    """The publishing daemon's boot id; the SSE id is ``epoch:seq`` (``epoch:seq-part``)."""

    @property
    def event_id(self) -> str:
        return format_event_id(self.epoch, self.seq, self.part)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_LAGGED = _Marker("LAGGED")
_CLOSED = _Marker("CLOSED")


class Subscription:
    """A subscriber's view of backend changes; ``get`` returns ``None`` once closed."""

    def __init__(self, maxsize: int, snapshot: Callable[[], list[BackendEvent]]) -> None:
        self._queue: asyncio.Queue[BackendEvent | _Marker] = asyncio.Queue(max(2, maxsize))
        self._snapshot = snapshot
        self._pending: deque[BackendEvent] = deque()
        self._lagged = False
        self._closed = False
        self.resyncs = 0
        """How often this subscriber fell behind and was re-synced."""

    @property
    def closed(self) -> bool:
        return self._closed

    def _offer(self, event: BackendEvent) -> None:
        if self._lagged or self._closed:
            return  # the pending re-sync (or the end) covers it
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._drain()
            self._lagged = True
            self.resyncs += 1
            self._queue.put_nowait(_LAGGED)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._queue.full():
            self._drain()
        self._queue.put_nowait(_CLOSED)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    async def get(self) -> BackendEvent | None:
        """The next change; after a lag, the current state of every backend, one by one."""
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed and self._queue.empty():
                return None
            item = await self._queue.get()
            if item is _CLOSED:
                return None
            if item is _LAGGED:
                self._lagged = False
                self._pending.extend(self._snapshot())
                continue
            assert isinstance(item, BackendEvent)
            return item


class StatusPublisher:
    def __init__(
        self,
        *,
        daemon: DaemonInfo,
        status_path: Path | None = None,
        redact: Callable[[str], str] | None = None,
        clock: Callable[[], datetime] = utc_now,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        epoch: str | None = None,
    ) -> None:
        self._daemon = daemon
        self.epoch = epoch if epoch is not None else new_epoch()
        """This daemon's boot id (the document's ``epoch``, the first half of every SSE id)."""
        self._redact = redact or (lambda text: text)
        self._clock = clock
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._backends: dict[str, BackendStatus] = {}
        self._gpus: list[GpuStatus] = []
        self._seq = 0
        self._adoption_done = False
        self._first_probe_round_done = False
        self._gpu_error: str | None = None
        self._subscribers: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._writer = CoalescingFileWriter(status_path) if status_path is not None else None
        self.status_path = status_path
        self.metrics = StatusMetrics(lambda: self.document)
        self._document, self._document_json = self._render()
        if self._writer is not None:
            self._writer.offer(self._document_json)

    # -- reading ----------------------------------------------------------------------------
    @property
    def document(self) -> StatusDocument:
        return self._document

    @property
    def document_json(self) -> bytes:
        """The current document, serialised once per change (what ``/v1/status`` serves)."""
        return self._document_json

    @property
    def seq(self) -> int:
        """Increments with every change of the document."""
        return self._seq

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def backend(self, name: str) -> BackendStatus | None:
        return self._backends.get(name)

    # -- changing ---------------------------------------------------------------------------
    def set_backends(self, backends: Iterable[BackendStatus]) -> None:
        """Replace the list of backends (config load or reload), keeping the given order.

        Backends that are new or differ beyond probe timings are announced as events; removed
        backends simply disappear from the document.
        """
        incoming = [self._redacted(b) for b in backends]
        with self._lock:
            old = self._backends
            self._backends = {b.name: b for b in incoming}
            changed = [b for b in incoming if _significant(old.get(b.name), b)]
            removed = [name for name in old if name not in self._backends]
            if not changed and not removed and list(old.values()) == incoming:
                return
            events = self._commit(changed)
        for name in removed:
            self.metrics.forget_backend(name)
        self._fan_out(events)

    def update_backend(self, name: str, **changes: Unpack[BackendChanges]) -> BackendStatus:
        """Change some fields of one backend (``state=``, ``pid=``, ``detail=`` …).

        A change of ``state`` stamps ``since`` unless given. A ``latency_ms`` (each probe's
        result) is also observed in the probe-latency histogram. Raises ``KeyError`` for a
        backend the publisher was never told about, ``TypeError`` for a field that is not one
        of ``BackendChanges`` (mypy catches it first).
        """
        unknown = set(changes) - _CHANGEABLE
        if unknown:
            raise TypeError(f"not a changeable backend field: {', '.join(sorted(unknown))}")
        with self._lock:
            old = self._backends[name]
            merged = old.model_dump(exclude={"available"})
            merged.update(dict(changes))
            if "state" in changes and changes["state"] != old.state and "since" not in changes:
                merged["since"] = self._clock()
            new = self._redacted(BackendStatus.model_validate(merged))
            changed = new != old
            if changed:
                self._backends[name] = new
                events = self._commit([new] if _significant(old, new) else [])
        latency_ms = changes.get("latency_ms")
        if latency_ms is not None:
            self.metrics.observe_probe(name, float(latency_ms) / 1000.0)
        if changed:
            self._fan_out(events)
        return new

    def remove_backend(self, name: str) -> None:
        with self._lock:
            if self._backends.pop(name, None) is None:
                return
            self._commit([])
        self.metrics.forget_backend(name)

    def set_gpus(self, gpus: Sequence[GpuStatus], error: str | None = None) -> None:
        """Replace the GPU inventory (memory and processes) and why it could not be read, if
        it could not; no SSE event, the file is rewritten."""
        with self._lock:
            new = list(gpus)
            if new == self._gpus and error == self._gpu_error:
                return
            if error != self._gpu_error:
                log.warning("gpu.unreadable" if error else "gpu.readable", error=error)
            self._gpus, self._gpu_error = new, error
            self._commit([])

    def mark_adoption_done(self) -> None:
        """The daemon has adopted (or given up on) every child a previous daemon left: the
        document says ``adoption_done: true`` from now on (idempotent; no SSE event)."""
        with self._lock:
            if self._adoption_done:
                return
            self._adoption_done = True
            self._commit([])

    def mark_first_probe_round_done(self) -> None:
        """Every probed backend has a first probe verdict: the document says
        ``first_probe_round_done: true`` from now on (idempotent; no SSE event)."""
        with self._lock:
            if self._first_probe_round_done:
                return
            self._first_probe_round_done = True
            self._commit([])

    # -- subscribing ------------------------------------------------------------------------
    def subscribe(self) -> Subscription:
        """A new subscriber; must be called on the event loop that will read it."""
        self._loop = asyncio.get_running_loop()
        sub = Subscription(self._queue_size, self.snapshot_events)
        if self._closed:
            sub._close()
        else:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def snapshot_events(self) -> list[BackendEvent]:
        """The current state of every backend as events (for a new or lagging subscriber)."""
        with self._lock:
            seq = self._seq
            backends = list(self._backends.values())
        return [BackendEvent(seq, b, b.model_dump_json().encode(), part=i, epoch=self.epoch)
                for i, b in enumerate(backends, start=1)]

    # -- lifecycle --------------------------------------------------------------------------
    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until ``status.json`` holds the current document; False on timeout."""
        return self._writer.flush(timeout_s) if self._writer is not None else True

    def close(self) -> None:
        """End every subscription (so SSE streams finish) and write the last document.

        Call on the event loop's thread, before stopping the HTTP servers.
        """
        self._closed = True
        for sub in list(self._subscribers):
            sub._close()
        self._subscribers.clear()
        if self._writer is not None:
            self._writer.close()

    # -- internals --------------------------------------------------------------------------
    def _redacted(self, b: BackendStatus) -> BackendStatus:
        r = self._redact
        updates: dict[str, Any] = {}
        if b.detail is not None:
            updates["detail"] = r(b.detail)
        if b.base_url is not None:
            updates["base_url"] = r(b.base_url)
        if b.unavailable_models:
            updates["unavailable_models"] = {m: r(why) for m, why in b.unavailable_models.items()}
        return b.model_copy(update=updates) if updates else b

    def _render(self) -> tuple[StatusDocument, bytes]:
        doc = StatusDocument.build(
            generated_at=self._clock(),
            daemon=self._daemon,
            gpus=self._gpus,
            backends=list(self._backends.values()),
            seq=self._seq,
            epoch=self.epoch,
            adoption_done=self._adoption_done,
            first_probe_round_done=self._first_probe_round_done,
            gpu_error=self._gpu_error,
        )
        return doc, doc.to_json_bytes()

    def _commit(self, changed: list[BackendStatus]) -> list[BackendEvent]:
        """Under the lock: publish a new document; return the events to fan out."""
        self._seq += 1
        self._document, self._document_json = self._render()
        if self._writer is not None:
            self._writer.offer(self._document_json)
        return [BackendEvent(self._seq, b, b.model_dump_json().encode(), epoch=self.epoch)
                for b in changed]

    def _fan_out(self, events: list[BackendEvent]) -> None:
        if not events or self._loop is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._deliver(events)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, events)

    def _deliver(self, events: list[BackendEvent]) -> None:
        for sub in list(self._subscribers):
            for event in events:
                sub._offer(event)


def new_epoch() -> str:
    """A boot id: 12 random hex digits (no ``:`` or ``-``, so ``epoch:seq-part`` parses)."""
    return secrets.token_hex(6)


def _significant(old: BackendStatus | None, new: BackendStatus) -> bool:
    """True when a router would care: anything beyond the probe timings changed."""
    if old is None:
        return True
    exclude = set(QUIET_FIELDS) | {"available"}
    return old.model_dump(exclude=exclude) != new.model_dump(exclude=exclude)
