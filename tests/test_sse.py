"""The one SSE parser (``gpumgr.sse``): the grammar, its bounds, and that no input can break it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gpumgr.sse import (
    EventId,
    SseComment,
    SseError,
    SseMessage,
    SseParser,
    format_event_id,
    parse_event_id,
)


def test_a_daemon_frame_and_a_heartbeat() -> None:
    p = SseParser()
    items = p.feed(b": connected\n\nevent: backend\nid: ab12:7\ndata: {\"name\": \"q\"}\n\n")
    assert items == [SseComment("connected"),
                     SseMessage("backend", '{"name": "q"}', "ab12:7")]


def test_crlf_and_cr_line_ends_even_split_across_chunks() -> None:
    p = SseParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\ndata: b\r\r") == [SseMessage("message", "a\nb")]
    assert p.feed(b"data: c\n\n") == [SseMessage("message", "c")]


def test_an_over_long_line_drops_its_message_and_the_next_one_is_read() -> None:
    p = SseParser(max_line=100, max_data=1000)
    items = p.feed(b"event: backend\ndata: " + b"x" * 500 + b"\ndata: still dropped\n\n"
                   b"data: ok\n\n")
    assert items == [SseError("a line over 100 bytes"), SseMessage("message", "ok")]


def test_a_message_over_the_data_cap_is_dropped() -> None:
    p = SseParser(max_line=100, max_data=250)
    items = p.feed(b"data: " + b"y" * 90 + b"\n" * 1 + (b"data: " + b"y" * 90 + b"\n") * 3
                   + b"\ndata: next\n\n")
    assert items == [SseError("a message over 250 bytes"), SseMessage("message", "next")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert SseParser().feed(b"data: \xff\xfe\n\n") == [SseMessage("message", "\ufffd\ufffd")]


def test_event_ids_new_and_old_forms() -> None:
    assert parse_event_id("ab12cd:164") == EventId("ab12cd", 164, 0)
    assert parse_event_id("ab12cd:8-3") == EventId("ab12cd", 8, 3)
    assert parse_event_id("164") == EventId("", 164, 0)
    assert parse_event_id("164-2") == EventId("", 164, 2)
    assert format_event_id("ab12cd", 8, 3) == "ab12cd:8-3"
    assert format_event_id("", 8) == "8"


def test_ids_that_killed_the_old_follower_are_refused_quietly() -> None:
    for text in ("²", "1²", "9" * 4301, "ab:" + "9" * 4301, "-1", "1-", ":1", "", None,
                 "a:b:1", "1e5", " 1", "١٢"):  # the last: Arabic-Indic digits
        assert parse_event_id(text) is None, text


@given(st.text(max_size=200))
def test_parse_event_id_never_raises_and_what_it_reads_round_trips(text: str) -> None:
    eid = parse_event_id(text)
    if eid is not None:
        assert parse_event_id(format_event_id(eid.epoch, eid.seq, eid.part)) == eid


@settings(max_examples=300)
@given(st.binary(max_size=3000), st.lists(st.integers(1, 200), max_size=30))
def test_any_bytes_in_any_chunking_give_the_same_items_within_bounds(
    data: bytes, cuts: list[int],
) -> None:
    whole = SseParser(max_line=64, max_data=256).feed(data)
    p = SseParser(max_line=64, max_data=256)
    pieces: list[object] = []
    at = 0
    for size in cuts:
        pieces += p.feed(data[at:at + size])
        at += size
        assert len(p._buf) <= 64 and p._data_size <= 256 + 64
    pieces += p.feed(data[at:])
    assert pieces == whole
    for item in whole:
        if isinstance(item, SseMessage):
            assert len(item.data.encode()) <= 3 * 256


@given(st.binary(max_size=2000))
def test_after_any_garbage_a_blank_line_resyncs(garbage: bytes) -> None:
    p = SseParser(max_line=64, max_data=256)
    p.feed(garbage)
    items = p.feed(b"\n\nevent: backend\nid: e:1\ndata: {}\n\n")
    assert items[-1] == SseMessage("backend", "{}", "e:1")
