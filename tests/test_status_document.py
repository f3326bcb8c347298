"""The status document's contract (DESIGN.md §5): field names, derived facts, wire format."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from gpumgr.backend_state import BackendState
from gpumgr.status.document import (
    BackendStatus,
    DaemonInfo,
    GpuProcess,
    GpuStatus,
    StatusDocument,
    build_models,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _doc(*backends: BackendStatus) -> StatusDocument:
    return StatusDocument.build(
        generated_at=T0,
        daemon=DaemonInfo(pid=123, started_at=T0, simulated=True),
        gpus=[
            GpuStatus(
                index=0,
                uuid="GPU-0",
                name="Quadro RTX 5000",
                memory_total_mib=16384,
                memory_used_mib=9000,
                memory_free_mib=7384,
                processes=[GpuProcess(pid=4242, used_mib=8200, owner="qwen-7b")],
            )
        ],
        backends=list(backends),
    )


def test_document_carries_exactly_the_contract_field_names() -> None:
    doc = _doc(
        BackendStatus(
            name="qwen-7b",
            type="vllm",
            base_url="http://127.0.0.1:8001",
            state=BackendState.UP,
            managed=True,
            models=["qwen-coder-vllm"],
            pid=4242,
            port=8001,
            gpu_memory_utilization=0.62,
            since=T0,
            last_check=T0,
            latency_ms=2.1,
            detail="health 200",
        )
    )
    data = json.loads(doc.to_json_bytes())
    assert set(data) == {
        "version", "generated_at", "daemon", "gpus", "backends", "models",
        # additions (docs/status.md): seq, "no information yet" flags, the stated max age
        "seq", "epoch", "adoption_done", "first_probe_round_done", "max_age_s", "gpu_error",
    }
    assert data["version"] == 1
    assert set(data["daemon"]) == {"pid", "started_at", "simulated"}
    assert set(data["gpus"][0]) == {
        "index", "uuid", "name", "memory_total_mib", "memory_used_mib", "memory_free_mib",
        "processes",
    }
    assert set(data["gpus"][0]["processes"][0]) == {"pid", "used_mib", "owner"}
    contract_backend_fields = {
        "name", "type", "base_url", "state", "available", "busy", "managed", "models", "pid",
        "port", "gpu_memory_utilization", "restarts", "since", "last_check", "latency_ms",
        "detail",
    }
    assert contract_backend_fields <= set(data["backends"][0])
    additions = {"suspect", "progress", "eta_s", "unavailable_models", "weights_commit"}
    assert additions <= set(data["backends"][0])
    assert (data["backends"][0]["suspect"], data["backends"][0]["eta_s"]) == (False, None)
    assert data["models"] == {
        "qwen-coder-vllm": {"backend": "qwen-7b", "available": True, "reason": None}
    }


@pytest.mark.parametrize("state", list(BackendState))
def test_available_is_true_only_when_up(state: BackendState) -> None:
    backend = BackendStatus(name="b", type="vllm", state=state, models=["m"])
    assert backend.available is (state is BackendState.UP)
    assert json.loads(backend.model_dump_json())["available"] is (state is BackendState.UP)


def test_available_sent_by_a_client_cannot_contradict_state() -> None:
    parsed = BackendStatus.model_validate(
        {"name": "b", "type": "vllm", "state": "down", "available": True}
    )
    assert parsed.available is False


def test_timestamps_are_rfc3339_utc_on_the_wire() -> None:
    plus_two = timezone(timedelta(hours=2))
    backend = BackendStatus(
        name="b", type="vllm", since=datetime(2025, 1, 2, 5, 4, 5, tzinfo=plus_two)
    )
    data = json.loads(_doc(backend).to_json_bytes())
    assert data["generated_at"] == "2025-01-02T03:04:05Z"
    assert data["backends"][0]["since"] == "2025-01-02T03:04:05Z"


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValidationError):
        DaemonInfo(pid=1, started_at=datetime(2025, 1, 1))


def test_unknown_state_is_refused() -> None:
    with pytest.raises(ValidationError):
        BackendStatus(name="b", type="vllm", state="sleepy")  # type: ignore[arg-type]


def test_models_map_names_the_reason_a_model_is_unavailable() -> None:
    models = build_models(
        [
            BackendStatus(
                name="ollama",
                type="ollama",
                state=BackendState.UP,
                models=["llama3:8b", "qwen2.5:14b"],
                unavailable_models={"qwen2.5:14b": "not pulled"},
            ),
            BackendStatus(
                name="cloud",
                type="ollama_cloud",
                state=BackendState.RATE_LIMITED,
                models=["gpt-oss:120b"],
                detail="HTTP 429; backing off 60 s",
            ),
        ]
    )
    assert models["llama3:8b"].available is True and models["llama3:8b"].reason is None
    assert models["qwen2.5:14b"].available is False
    assert models["qwen2.5:14b"].reason == "not pulled"
    assert models["gpt-oss:120b"].available is False
    assert models["gpt-oss:120b"].reason == "cloud is rate_limited: HTTP 429; backing off 60 s"


def test_models_map_prefers_the_backend_that_can_serve_a_shared_name() -> None:
    standby = BackendStatus(name="qwen-14b", type="vllm", state="stopped", models=["coder"])
    active = BackendStatus(name="qwen-7b", type="vllm", state="up", models=["coder"])
    assert build_models([standby, active])["coder"].backend == "qwen-7b"
    both_down = [standby, active.model_copy(update={"state": BackendState.DOWN})]
    assert build_models(both_down)["coder"].backend == "qwen-14b"


def test_a_reader_ignores_fields_added_by_a_newer_daemon() -> None:
    data = json.loads(_doc(BackendStatus(name="b", type="vllm")).to_json_bytes())
    data["future_section"] = {"x": 1}
    data["backends"][0]["weights_revision"] = "abc"
    parsed = StatusDocument.model_validate(data)
    assert parsed.backends[0].name == "b"


def test_document_round_trips_through_its_json() -> None:
    doc = _doc(BackendStatus(name="b", type="vllm", state="up", models=["m"], since=T0))
    assert StatusDocument.model_validate_json(doc.to_json_bytes()) == doc
