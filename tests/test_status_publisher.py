"""The publisher: one owner of the document, the status.json file and the SSE fan-out."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpumgr.backend_state import BackendState
from gpumgr.status.document import BackendStatus, DaemonInfo, GpuProcess, GpuStatus
from gpumgr.status.publisher import BackendEvent, StatusPublisher, Subscription
from gpumgr.redaction import redactor_for

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def _publisher(tmp_path: Path, clock: Clock | None = None, **kw: object) -> StatusPublisher:
    pub = StatusPublisher(
        daemon=DaemonInfo(pid=1, started_at=T0),
        status_path=tmp_path / "run" / "status.json",
        clock=clock or Clock(),
        **kw,  # type: ignore[arg-type]
    )
    pub.set_backends(
        [
            BackendStatus(name="qwen-7b", type="vllm", models=["qwen-coder-vllm"], managed=True),
            BackendStatus(name="ollama", type="ollama", models=["llama3:8b"]),
        ]
    )
    return pub


async def _next(sub: Subscription) -> BackendEvent:
    async with asyncio.timeout(2):
        event = await sub.get()
    assert event is not None
    return event


def test_state_change_stamps_since_and_generated_at(tmp_path: Path) -> None:
    clock = Clock()
    pub = _publisher(tmp_path, clock)
    try:
        at = clock.advance(5)
        up = pub.update_backend("qwen-7b", state=BackendState.UP, detail="health 200")
        assert up.since == at and up.available
        assert pub.document.generated_at == at
        assert pub.document.models["qwen-coder-vllm"].available is True

        clock.advance(5)
        again = pub.update_backend("qwen-7b", state=BackendState.UP, detail="health 200")
        assert again.since == at, "since is when the state was entered, not the last report"
    finally:
        pub.close()


def test_an_update_that_changes_nothing_publishes_nothing(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    try:
        pub.update_backend("qwen-7b", state="up")
        seq = pub.seq
        pub.update_backend("qwen-7b", state="up")
        pub.set_gpus([])
        assert pub.seq == seq
    finally:
        pub.close()


def test_unknown_backend_is_a_key_error(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    try:
        with pytest.raises(KeyError):
            pub.update_backend("nope", state="up")
    finally:
        pub.close()


def test_status_json_holds_the_current_document_after_every_change(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    try:
        pub.update_backend("qwen-7b", state="up", pid=4242, port=8001)
        pub.set_gpus(
            [
                GpuStatus(
                    index=0, uuid="GPU-0", name="sim", memory_total_mib=16384,
                    memory_used_mib=8000, memory_free_mib=8384,
                    processes=[GpuProcess(pid=4242, used_mib=7700, owner="qwen-7b")],
                )
            ]
        )
        assert pub.flush(5)
        on_disk = (tmp_path / "run" / "status.json").read_bytes()
        assert on_disk == pub.document_json
        assert json.loads(on_disk)["gpus"][0]["processes"][0]["owner"] == "qwen-7b"
        assert not [p for p in (tmp_path / "run").iterdir() if p.name != "status.json"], (
            "no temporary file is left behind"
        )
    finally:
        pub.close()


def test_a_failing_status_file_does_not_stop_publication(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    pub = StatusPublisher(
        daemon=DaemonInfo(pid=1, started_at=T0), status_path=tmp_path / "not-a-dir" / "s.json"
    )
    try:
        pub.set_backends([BackendStatus(name="b", type="vllm")])
        pub.update_backend("b", state="up")
        assert pub.flush(5)
        assert pub.document.backends[0].available
    finally:
        pub.close()


async def test_subscribers_get_state_changes_in_order_but_not_probe_timings(
    tmp_path: Path,
) -> None:
    pub = _publisher(tmp_path)
    sub = pub.subscribe()
    try:
        pub.update_backend("qwen-7b", state="starting")
        seq_before_probe = pub.seq
        pub.update_backend("qwen-7b", last_check=T0, latency_ms=1.5)  # a probe, same state
        assert pub.seq == seq_before_probe + 1, "probe timings still change the document"
        pub.update_backend("qwen-7b", state="up")
        pub.update_backend("ollama", state="down", detail="connection refused")

        first, second, third = await _next(sub), await _next(sub), await _next(sub)
        assert [(e.backend.name, e.backend.state) for e in (first, second, third)] == [
            ("qwen-7b", BackendState.STARTING),
            ("qwen-7b", BackendState.UP),
            ("ollama", BackendState.DOWN),
        ]
        assert first.seq < second.seq < third.seq
        assert json.loads(third.data)["detail"] == "connection refused"
    finally:
        pub.close()


async def test_a_slow_subscriber_is_resynced_and_never_blocks_the_publisher(
    tmp_path: Path,
) -> None:
    pub = _publisher(tmp_path, queue_size=4)
    slow = pub.subscribe()
    try:
        states = [BackendState.UP, BackendState.DOWN]
        for i in range(200):  # returns without anyone reading: nothing waits on the subscriber
            pub.update_backend("qwen-7b", state=states[i % 2], restarts=i)
        pub.update_backend("ollama", state="up")

        seen: dict[str, BackendStatus] = {}
        while True:
            try:
                async with asyncio.timeout(0.2):
                    event = await slow.get()
            except TimeoutError:
                break  # drained: nothing more is queued
            assert event is not None
            seen[event.backend.name] = event.backend
        assert slow.resyncs >= 1
        assert seen["qwen-7b"] == pub.backend("qwen-7b"), "the newest state after the lag"
        assert seen["ollama"].state is BackendState.UP
    finally:
        pub.close()


async def test_changes_from_another_thread_reach_subscribers(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    sub = pub.subscribe()
    try:
        worker = threading.Thread(
            target=lambda: pub.update_backend("qwen-7b", state="down", detail="process exited")
        )
        worker.start()
        event = await _next(sub)
        worker.join()
        assert event.backend.state is BackendState.DOWN
    finally:
        pub.close()


async def test_close_ends_every_subscription(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    subs = [pub.subscribe() for _ in range(3)]
    pub.update_backend("qwen-7b", state="up")
    pub.close()
    for sub in subs:
        assert (await _next(sub)).backend.state is BackendState.UP, "queued events still arrive"
        async with asyncio.timeout(2):
            assert await sub.get() is None
    assert pub.subscriber_count == 0


def test_redaction_hook_sees_every_free_text_field(tmp_path: Path) -> None:
    pub = _publisher(tmp_path, redact=redactor_for(["sk-TOPSECRET"]))
    try:
        pub.set_backends(
            [
                BackendStatus(
                    name="cloud",
                    type="ollama_cloud",
                    base_url="https://user:sk-TOPSECRET@ollama.com",
                    models=["m1", "m2"],
                    unavailable_models={"m2": "refused key sk-TOPSECRET"},
                )
            ]
        )
        pub.update_backend("cloud", state="auth_failed", detail="401 for Bearer sk-TOPSECRET")
        assert pub.flush(5)
        text = pub.document_json.decode()
        assert "sk-TOPSECRET" not in text
        assert "401 for Bearer ***" in text and "refused key ***" in text
        assert "sk-TOPSECRET" not in (tmp_path / "run" / "status.json").read_text()
    finally:
        pub.close()
