"""``gpumgr status --watch``: follow the daemon's changes (``GET /v1/events``) until stopped.

Three outputs, chosen by where stdout goes:

- a terminal: the table, redrawn in place on every change;
- a pipe or a file: the table once, then one line per backend change as it happens
  (``12:01:07 qwen-7b: starting -> up (health 200)``), flushed line by line;
- ``--json``: one status document per backend change, each on one line (NDJSON), the first
  at once; a burst of changes is never folded into one document.

Ctrl-C and SIGTERM end it with exit 0 and no traceback; a reader that goes away (``| head``)
ends it quietly too. A daemon that cannot be reached, or that stays gone after its stream
ends, is one line and exit 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import httpx2
from rich.console import Console

from gpumgr.cli.status import base_url, fetch_status, render_table
from gpumgr.cli.tables import output_width
from gpumgr.errors import DaemonUnavailable
from gpumgr.sse import SseMessage, SseParser, parse_event_id
from gpumgr.status.document import BackendStatus, StatusDocument, build_models

Json = dict[str, Any]

RECONNECT_FOR_S = 10.0
"""After the event stream ends (the daemon restarting), how long to keep trying to reconnect."""
READ_TIMEOUT_S = 60.0
"""The daemon sends a heartbeat comment every few seconds; this much silence means it is gone."""


class _Terminated(Exception):
    """SIGTERM arrived: end the watch as Ctrl-C would."""


def sse_messages(chunks: Iterable[bytes]) -> Iterator[tuple[str | None, str]]:
    """The ``(id, data)`` of each Server-Sent Events message in a byte stream, through the
    package's one bounded parser (``gpumgr.sse``: comments such as the heartbeat skipped)."""
    parser = SseParser()
    for chunk in chunks:
        for item in parser.feed(chunk):
            if isinstance(item, SseMessage):
                yield item.id, item.data


def _seq(event_id: str | None) -> int | None:
    """The document ``seq`` of a frame (ids are ``epoch:seq`` or ``seq``, ``-part`` for a
    snapshot's frames)."""
    parsed = parse_event_id(event_id)
    return parsed.seq if parsed is not None else None


def change_frames(listen: str) -> Iterator[tuple[int | None, Json]]:
    """``(seq, backend)`` for every change the daemon pushes, reconnecting for a while when the
    stream ends (a daemon restart); ``DaemonUnavailable`` when it stays unreachable."""
    url = base_url(listen) + "/v1/events"
    gone_since: float | None = None
    while True:
        try:
            with httpx2.stream("GET", url, timeout=httpx2.Timeout(5.0, read=READ_TIMEOUT_S)) as r:
                r.raise_for_status()
                gone_since = None
                for event_id, data in sse_messages(r.iter_bytes()):
                    try:
                        frame = json.loads(data)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(frame, dict):
                        yield _seq(event_id), frame
        except httpx2.HTTPError as exc:
            if gone_since is None:
                gone_since = time.monotonic()
            if time.monotonic() - gone_since > RECONNECT_FOR_S:
                raise DaemonUnavailable(
                    f"gpumgr daemon not reachable at {url}: {type(exc).__name__}") from None
            time.sleep(0.5)
            continue
        gone_since = gone_since or time.monotonic()  # the stream ended: the daemon stopping


def _emit_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def document_at_change(live: Json, previous: Json, seq: int | None, backend: Json) -> Json:
    """The status document as of one backend change: the backends of ``previous`` with that
    one replaced (or added), ``models`` rebuilt from them as the daemon builds it, the change's
    ``seq``; what is measured rather than changed (GPU memory, the daemon's uptime) from
    ``live``, a document fetched now. So no change is lost to the next one arriving first."""
    before = StatusDocument.model_validate(previous)
    changed = BackendStatus.model_validate(backend)
    backends = [changed if b.name == changed.name else b for b in before.backends]
    if all(b.name != changed.name for b in before.backends):
        backends.append(changed)
    now = StatusDocument.model_validate(live)
    doc = now.model_copy(update={
        "backends": backends, "models": build_models(backends),
        "seq": before.seq if seq is None else seq,
    })
    return dict(json.loads(doc.model_dump_json()))


def _watch_json(listen: str) -> None:
    """One status document per backend change, one per line, each written as it arrives."""
    doc = fetch_status(listen)
    _emit_line(json.dumps(doc, separators=(",", ":")))
    first_seq = doc.get("seq") if isinstance(doc.get("seq"), int) else None
    for seq, backend in change_frames(listen):
        if first_seq is not None and seq is not None:
            if seq <= first_seq:
                continue  # already in the first document
            first_seq = None  # from here on every frame is new (a restarted daemon counts anew)
        doc = document_at_change(fetch_status(listen), doc, seq, backend)
        _emit_line(json.dumps(doc, separators=(",", ":")))


def change_line(old: Json | None, new: Json, now: float | None = None) -> str | None:
    """``HH:MM:SS name: old -> new (detail)`` when the state, busy flag or detail changed."""
    def key(b: Json | None) -> tuple[Any, ...]:
        return (None,) if b is None else (b.get("state"), b.get("busy"), b.get("detail"))

    if key(old) == key(new):
        return None
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    before = old.get("state") if old else "-"
    state = str(new.get("state")) + (" (busy)" if new.get("busy") else "")
    detail = f" ({new['detail']})" if new.get("detail") else ""
    return f"{stamp} {new.get('name')}: {before} -> {state}{detail}"


def _watch_lines(listen: str, width: int) -> None:
    """The table once, then a line per backend change (for a pipe or a file)."""
    doc = fetch_status(listen)
    console = Console(width=width, file=sys.stdout, force_terminal=False)
    console.print(render_table(doc, width))
    sys.stdout.flush()
    known: dict[str, Json] = {str(b["name"]): b for b in doc.get("backends", [])}
    for _, frame in change_frames(listen):
        name = str(frame.get("name"))
        line = change_line(known.get(name), frame)
        known[name] = frame
        if line is not None:
            _emit_line(line)


def _watch_live(listen: str) -> None:
    """The table on a terminal, redrawn on every change."""
    from rich.live import Live

    console = Console()
    doc = fetch_status(listen)
    with Live(render_table(doc, console.width), console=console, auto_refresh=False) as live:
        for seq, _ in change_frames(listen):
            if seq is not None and isinstance(doc.get("seq"), int) and seq <= doc["seq"]:
                continue
            doc = fetch_status(listen)
            live.update(render_table(doc, console.width), refresh=True)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def watch_status(listen: str, *, as_json: bool) -> None:
    """Follow the daemon until Ctrl-C or SIGTERM (both: return normally, exit 0)."""
    width = output_width()
    run: Callable[[], None]
    if as_json:
        run = lambda: _watch_json(listen)  # noqa: E731
    elif width is None:
        run = lambda: _watch_live(listen)  # noqa: E731
    else:
        run = lambda: _watch_lines(listen, width)  # noqa: E731
    try:
        with _sigterm_raises():
            run()
    except (KeyboardInterrupt, _Terminated):
        return
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly; stdout to /dev/null so that the
        # interpreter's own flush at exit does not complain about the broken pipe either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return
