"""Server-Sent Events, read incrementally and within bounds: the one parser of ``/v1/events``.

Every reader of the daemon's event stream (the LiteLLM callback's follower, ``gpumgr status
--watch``, the test harness) feeds the bytes it receives to an ``SseParser`` and gets back whole
messages. The parser must survive whatever a status URL sends — a proxy's error page, a
truncated frame, a line of a gigabyte, invalid UTF-8 — because a reader that dies on one bad
frame stays blind until it is restarted. So:

- a line longer than ``max_line`` bytes, or a message whose data grows past ``max_data`` bytes,
  is dropped whole: the parser skips to the next blank line (the next message boundary) and
  reports one ``SseError``, then carries on;
- bytes are decoded as UTF-8 with replacement (a bad byte never raises);
- lines end at ``\\r\\n``, ``\\n`` or ``\\r`` (the SSE grammar), across chunk boundaries.

``parse_event_id`` reads the daemon's ids — ``epoch:seq``, ``epoch:seq-part`` and the older
``seq`` / ``seq-part`` — into numbers without ``int()`` on unbounded or non-ASCII digits (``²``
is a digit to ``str.isdigit`` but not to ``int``; 4,300 digits exceed Python's limit).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MAX_LINE = 64 * 1024
DEFAULT_MAX_DATA = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SseMessage:
    """One dispatched message: its ``event`` type ("message" when none was named), its data
    lines joined by newlines, and the ``id`` field it carried (None when it had none)."""

    event: str
    data: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class SseComment:
    """A ``:`` line (the daemon's ``: connected`` and ``: heartbeat``): proof of life."""

    text: str


@dataclass(frozen=True, slots=True)
class SseError:
    """Something was dropped (an over-long line or message); the parser resynchronised."""

    reason: str


SseItem = SseMessage | SseComment | SseError


class SseParser:
    """Feed bytes, get messages. Memory is bounded by ``max_line + max_data`` whatever arrives."""

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE,
                 max_data: int = DEFAULT_MAX_DATA) -> None:
        self._max_line = max_line
        self._max_data = max_data
        self._buf = bytearray()
        self._skipping_line = False
        """The current line overflowed: drop bytes up to its end."""
        self._skipping_message = False
        """The current message overflowed: drop lines up to the next blank one."""
        self._after_cr = False
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SseItem]:
        """The items completed by ``chunk`` (possibly none)."""
        out: list[SseItem] = []
        start = 0
        n = len(chunk)
        if self._after_cr and n and chunk[0] == 0x0A:
            start = 1  # the \n of a \r\n split across chunks
        self._after_cr = False
        while start < n:
            end = _line_end(chunk, start)
            if end < 0:
                self._append(chunk[start:], out)
                break
            self._append(chunk[start:end], out)
            self._end_line(out)
            if chunk[end] == 0x0D:
                if end + 1 < n:
                    start = end + 2 if chunk[end + 1] == 0x0A else end + 1
                else:
                    self._after_cr = True
                    start = n
            else:
                start = end + 1
        return out

    def _append(self, part: bytes, out: list[SseItem]) -> None:
        if self._skipping_line:
            return
        if len(self._buf) + len(part) > self._max_line:
            self._buf.clear()
            self._skipping_line = True
            self._drop(out, f"a line over {self._max_line} bytes")
            return
        self._buf += part

    def _drop(self, out: list[SseItem], reason: str) -> None:
        if not self._skipping_message:
            out.append(SseError(reason))
        self._skipping_message = True
        self._reset_message()

    def _reset_message(self) -> None:
        self._event, self._data, self._data_size, self._id = "", [], 0, None

    def _end_line(self, out: list[SseItem]) -> None:
        if self._skipping_line:
            self._skipping_line = False
            return  # the over-long line ended; its message is already dropped
        line = self._buf.decode("utf-8", errors="replace")
        self._buf.clear()
        if line == "":
            if self._skipping_message:
                self._skipping_message = False
            elif self._data:
                out.append(SseMessage(self._event or "message", "\n".join(self._data), self._id))
            self._reset_message()
            return
        if self._skipping_message:
            return
        if line.startswith(":"):
            out.append(SseComment(line[1:].lstrip(" ")))
            return
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data_size += len(value) + 1
            if self._data_size > self._max_data:
                self._drop(out, f"a message over {self._max_data} bytes")
                return
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\x00" not in value:
                self._id = value
        # "retry" and unknown fields are ignored, as the grammar says


def _line_end(chunk: bytes, start: int) -> int:
    lf = chunk.find(b"\n", start)
    cr = chunk.find(b"\r", start, lf if lf >= 0 else len(chunk))
    return cr if cr >= 0 else lf


@dataclass(frozen=True, slots=True)
class EventId:
    """A daemon event id: the daemon's boot ``epoch`` ("" for an older daemon's bare ids), the
    document ``seq``, and the snapshot ``part`` (0 for a change)."""

    epoch: str
    seq: int
    part: int = 0


MAX_SEQ_DIGITS = 18
_ID = re.compile(r"(?:([0-9A-Za-z_]{1,64}):)?([0-9]{1,%d})(?:-([0-9]{1,9}))?" % MAX_SEQ_DIGITS,
                 re.ASCII)


def parse_event_id(text: str | None) -> EventId | None:
    """``epoch:seq[-part]`` or ``seq[-part]`` → ``EventId``; None for anything else (never
    raises, whatever the text)."""
    if text is None or len(text) > 100:
        return None
    m = _ID.fullmatch(text)
    if m is None:
        return None
    return EventId(m.group(1) or "", int(m.group(2)), int(m.group(3) or 0))


def format_event_id(epoch: str, seq: int, part: int = 0) -> str:
    """The id the daemon writes: ``epoch:seq`` for a change, ``epoch:seq-part`` for a snapshot
    frame (no epoch: the older bare form)."""
    base = f"{epoch}:{seq}" if epoch else str(seq)
    return base if part == 0 else f"{base}-{part}"
