"""The additive status fields a router relies on (docs/status.md): ``seq`` equal to the SSE ids,
the "no information yet" flags, ``suspect``, ``progress``/``eta_s``, the heartbeat and max age."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gpumgr.api.status_app import DEFAULT_HEARTBEAT_S
from gpumgr.backend_state import BackendState
from gpumgr.status.document import HEARTBEAT_S, MAX_AGE_S, BackendStatus, DaemonInfo
from gpumgr.status.publisher import BackendEvent, StatusPublisher, Subscription

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

pytestmark = pytest.mark.anyio


def _publisher(tmp_path: Path) -> StatusPublisher:
    pub = StatusPublisher(
        daemon=DaemonInfo(pid=1, started_at=T0), status_path=tmp_path / "status.json"
    )
    pub.set_backends([
        BackendStatus(name="qwen-7b", type="vllm", models=["qwen-coder-vllm"], managed=True,
                      state=BackendState.UP),
    ])
    return pub


def _doc(pub: StatusPublisher) -> dict[str, object]:
    return dict(json.loads(pub.document_json))


async def _next(sub: Subscription) -> BackendEvent:
    async with asyncio.timeout(2):
        event = await sub.get()
    assert event is not None
    return event


async def test_seq_in_the_document_is_the_id_of_the_event_that_carries_the_change(
    tmp_path: Path,
) -> None:
    pub = _publisher(tmp_path)
    sub = pub.subscribe()
    before = _doc(pub)["seq"]
    assert isinstance(before, int) and before >= 1
    pub.update_backend("qwen-7b", state=BackendState.DOWN)
    event = await _next(sub)
    assert event.seq == _doc(pub)["seq"] == before + 1
    # A snapshot (what a new subscriber reads first) carries the current seq as well, and each of
    # its frames its own id, so Last-Event-ID names one frame.
    snapshot = pub.snapshot_events()
    assert {e.seq for e in snapshot} == {event.seq}
    ids = [e.event_id for e in snapshot]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith(f"{pub.epoch}:{event.seq}-") for i in ids)
    assert event.event_id == f"{pub.epoch}:{event.seq}"
    assert _doc(pub)["epoch"] == pub.epoch
    pub.close()


def test_flags_say_no_information_until_the_daemon_marks_them(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    doc = _doc(pub)
    assert (doc["adoption_done"], doc["first_probe_round_done"]) == (False, False)
    seq = pub.seq
    pub.mark_adoption_done()
    pub.mark_adoption_done()  # idempotent: one change only
    assert pub.seq == seq + 1 and _doc(pub)["adoption_done"] is True
    pub.mark_first_probe_round_done()
    assert _doc(pub)["first_probe_round_done"] is True and pub.seq == seq + 2
    assert pub.flush(5.0)
    on_disk = json.loads((tmp_path / "status.json").read_bytes())
    assert on_disk["adoption_done"] is True and on_disk["seq"] == pub.seq


async def test_suspect_is_an_event_and_progress_is_not(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    sub = pub.subscribe()
    pub.update_backend("qwen-7b", progress=0.4, eta_s=12.0)
    backend = _doc(pub)["backends"][0]  # type: ignore[index]
    assert (backend["progress"], backend["eta_s"]) == (0.4, 12.0)
    pub.update_backend("qwen-7b", suspect=True)
    event = await _next(sub)  # the first event is suspect: progress/eta_s sent none
    assert json.loads(event.data)["suspect"] is True
    assert json.loads(event.data)["available"] is True  # suspect does not change availability
    pub.close()


def test_a_bad_progress_is_refused(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    with pytest.raises(ValueError):
        pub.update_backend("qwen-7b", progress=1.5)


def test_heartbeat_and_max_age_define_staleness() -> None:
    assert DEFAULT_HEARTBEAT_S == HEARTBEAT_S <= 2.0
    assert MAX_AGE_S >= 2 * HEARTBEAT_S  # one lost heartbeat is not yet stale
    assert BackendStatus(name="b", type="vllm").suspect is False
