"""The pure pieces of ``status --watch``: reading Server-Sent Events and the line per change."""

from __future__ import annotations

from gpumgr.cli.watch import change_line, sse_messages


def test_sse_messages_skip_comments_join_data_lines_and_keep_the_id() -> None:
    lines = [": connected", "", "event: backend", "id: 7", 'data: {"a":', "data: 1}", "",
             ": heartbeat", "", "id: 8-2", "data:{}", ""]
    assert list(sse_messages(["\n".join(lines).encode() + b"\n"])) == [
        ("7", '{"a":\n1}'), ("8-2", "{}")]


def test_a_message_cut_off_before_its_blank_line_is_not_reported() -> None:
    assert list(sse_messages([b"id: 3\n", b"data: {}\n"])) == []


def test_a_change_line_names_the_backend_both_states_and_the_detail() -> None:
    old = {"name": "qwen-7b", "state": "up", "busy": False, "detail": "health 200"}
    new = {"name": "qwen-7b", "state": "draining", "busy": False, "detail": "draining pid 42"}
    line = change_line(old, new, now=0)
    assert line is not None and line.endswith(" qwen-7b: up -> draining (draining pid 42)")
    assert change_line(new, dict(new), now=0) is None  # nothing a reader sees changed
    first = change_line(None, {"name": "x", "state": "starting", "busy": True}, now=0)
    assert first is not None and first.endswith(" x: - -> starting (busy)")


def _doc(seq: int, state: str, used_mib: int) -> dict[str, object]:
    return {
        "version": 1, "generated_at": "2026-12-05T20:00:00Z", "seq": seq,
        "daemon": {"pid": 1, "started_at": "2026-12-05T19:00:00Z"},
        "gpus": [{"index": 0, "uuid": "GPU-0", "name": "Quadro RTX 5000",
                  "memory_total_mib": 16384, "memory_used_mib": used_mib,
                  "memory_free_mib": 16384 - used_mib}],
        "backends": [{"name": "qwen-7b", "type": "vllm", "state": state,
                      "models": ["qwen-coder"]},
                     {"name": "ollama", "type": "ollama", "state": "up", "models": ["llama"]}],
    }


def test_the_document_at_a_change_has_that_change_even_when_the_daemon_is_already_past_it() -> None:
    from gpumgr.cli.watch import document_at_change

    before = _doc(5, "up", 14000)
    live_now = _doc(9, "stopped", 300)  # the daemon is already three changes further
    draining = {"name": "qwen-7b", "type": "vllm", "state": "draining", "models": ["qwen-coder"],
                "detail": "draining pid 42"}
    doc = document_at_change(live_now, before, 6, draining)
    assert doc["seq"] == 6
    assert [b["state"] for b in doc["backends"]] == ["draining", "up"]
    assert doc["models"]["qwen-coder"]["available"] is False
    assert "draining" in doc["models"]["qwen-coder"]["reason"]
    assert doc["models"]["llama"]["available"] is True
    assert doc["gpus"][0]["memory_used_mib"] == 300  # measured now, not a change
