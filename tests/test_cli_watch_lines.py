"""The pure pieces of ``status --watch``: reading Server-Sent Events and the line per change."""

from __future__ import annotations

from gpumgr.cli.watch import change_line, sse_messages


def test_sse_messages_skip_comments_join_data_lines_and_keep_the_id() -> None:
    lines = [": connected", "", "event: backend", "id: 7", 'data: {"a":', "data: 1}", "",
             ": heartbeat", "", "id: 8-2", "data:{}", ""]
    assert list(sse_messages(lines)) == [("7", '{"a":\n1}'), ("8-2", "{}")]


def test_a_message_cut_off_before_its_blank_line_is_not_reported() -> None:
    assert list(sse_messages(["id: 3", "data: {}"])) == []


def test_a_change_line_names_the_backend_both_states_and_the_detail() -> None:
    old = {"name": "qwen-7b", "state": "up", "busy": False, "detail": "health 200"}
    new = {"name": "qwen-7b", "state": "draining", "busy": False, "detail": "draining pid 42"}
    line = change_line(old, new, now=0)
    assert line is not None and line.endswith(" qwen-7b: up -> draining (draining pid 42)")
    assert change_line(new, dict(new), now=0) is None  # nothing a reader sees changed
    first = change_line(None, {"name": "x", "state": "starting", "busy": True}, now=0)
    assert first is not None and first.endswith(" x: - -> starting (busy)")
