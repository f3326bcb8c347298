"""End-to-end: a managed engine of vLLM 0.34 (the simulated one, ``GPUMGR_SIM_VLLM_VERSION``)
that commits less KV cache after warm-up than the plan promised is published ``degraded``, with
planned against actual and the release it runs; a 0.33 engine of the same plan is ``up``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gpumgr.sim.harness import (
    FAST_HEALTH_YAML,
    FAST_LIFECYCLE_YAML,
    DaemonHarness,
    assert_clean_daemon_log,
    free_port,
    vllm_provider_yaml,
    wait_for,
)

pytestmark = pytest.mark.slow

ENGINE = "qwen-7b"


def _run(tmp: Path, env: dict[str, str], wanted: str,
         contexts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    harness = DaemonHarness(
        tmp, "providers:" + vllm_provider_yaml(ENGINE, free_port()),
        FAST_HEALTH_YAML.format(restart_after_s=600) + FAST_LIFECYCLE_YAML, env=env,
    )  # fmt: skip
    try:
        harness.start()
        b = harness.wait_backend(ENGINE, lambda b: b["state"] == wanted and b.get(
            "kv_cache_tokens_actual") is not None, 60, f"{ENGINE} {wanted}")
        if contexts is not None:  # the card's measured context, from NVML after the start
            path = tmp / "state" / "cuda-contexts.json"
            wait_for(path.exists, 15, "cuda-contexts.json")
            contexts.extend(json.loads(path.read_text()).values())
        assert harness.stop() == 0
        assert_clean_daemon_log(harness.log_text())
        return b
    finally:
        harness.cleanup()


def test_a_0_34_engine_with_less_kv_cache_than_planned_is_degraded_not_available(
    tmp_path: Path,
) -> None:
    # the margin vLLM keeps after warm-up, made large: the engine commits far less than the cap
    b = _run(tmp_path, {"GPUMGR_SIM_VLLM_VERSION": "0.34.0", "GPUMGR_SIM_KV_MARGIN_MIB": "8800"},
             "degraded")
    assert b["available"] is False and b["vllm_version"] == "0.34.0"
    assert b["kv_cache_tokens_actual"] < b["kv_cache_tokens_planned"]
    assert "< the plan's minimum" in b["detail"]


def test_a_0_33_engine_reports_the_kv_cache_it_was_planned_and_its_context_is_measured(
    tmp_path: Path,
) -> None:
    contexts: list[dict[str, Any]] = []
    b = _run(tmp_path, {}, "up", contexts)
    [card] = contexts
    assert 495 <= card["context_mib"] <= 510  # the simulated engine's 500 MiB context
    assert b["available"] is True and b["vllm_version"] == "0.33.0"
    assert b["kv_cache_tokens_actual"] >= b["kv_cache_tokens_planned"] * 0.99
