"""Swap outcomes reach /metrics through the control API's one observation per operation: a
rolled-back swap is counted as ``rolled_back`` (what ``GpumgrSwapFailed`` alerts on) and the
engine that failed to come up is neither desired nor a target. (Clean swaps, counted ``ok``:
tests/test_monitoring_prometheus.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpumgr.sim.harness import free_port
from test_swap import QWEN_7B, QWEN_14B, Box, provider

pytestmark = pytest.mark.slow


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_a_rolled_back_swap_is_counted_rolled_back_and_the_failed_engine_is_no_target(tmp_path: Path) -> None:
    port = free_port()
    b = Box(tmp_path, provider("qwen-7b", port, QWEN_7B)
            + provider("qwen-14b", port, QWEN_14B, status="standby",
                       env={"GPUMGR_SIM_OOM_AT_START": "1"}))
    try:
        b.daemon.start()
        b.daemon.wait_up("qwen-7b", 60)
        s = _samples(b.daemon.get("/metrics").text)
        assert s[("gpumgr_swaps_total", frozenset({("outcome", "rolled_back")}))] == 0
        done = b.cli("swap", "qwen-7b", "qwen-14b")
        assert done.returncode == 1 and "qwen-7b is back" in done.stderr
        b.daemon.wait_up("qwen-7b", 30)
        s = _samples(b.daemon.get("/metrics").text)
        assert s[("gpumgr_swaps_total", frozenset({("outcome", "rolled_back")}))] == 1
        assert s[("gpumgr_swaps_total", frozenset({("outcome", "ok")}))] == 0
        assert s[("gpumgr_swap_duration_seconds_count",
                  frozenset({("mode", "unknown"), ("outcome", "rolled_back")}))] == 1
        assert s[("gpumgr_operation_duration_seconds_count",
                  frozenset({("operation", "swap"), ("outcome", "rolled_back")}))] == 1
        targets = b.daemon.get("/v1/prometheus/targets").json()
        assert [g["labels"]["gpumgr_backend"] for g in targets] == ["qwen-7b"]
        assert s[("gpumgr_backend_desired_up", frozenset({("backend", "qwen-14b"),
                                                          ("type", "vllm")}))] == 0
        assert b.daemon.stop() == 0
    finally:
        b.daemon.cleanup()


def test_a_sleep_mode_swap_keeps_the_sleeper_listed_asleep_and_times_the_wake(tmp_path: Path) -> None:
    def sleepy(name: str, repo: str, status: str) -> str:
        return provider(name, free_port(), repo, status=status, max_model_len=4096).replace(
            "    max_num_seqs: 4\n", "    max_num_seqs: 4\n    swap_mode: sleep\n")

    b = Box(tmp_path, sleepy("qwen-7b", QWEN_7B, "active") + sleepy("qwen-14b", QWEN_14B, "standby"))
    try:
        d = b.daemon
        d.start()
        d.wait_up("qwen-7b", 60)
        assert b.cli("swap", "qwen-7b", "qwen-14b").returncode == 0
        d.wait_up("qwen-14b", 30)
        listed = {g["labels"]["gpumgr_backend"]: g["labels"]
                  for g in d.get("/v1/prometheus/targets").json()}
        assert listed["qwen-7b"]["gpumgr_asleep"] == "true"  # asleep on purpose: still a target
        assert listed["qwen-14b"]["gpumgr_asleep"] == "false"
        done = b.cli("swap", "qwen-14b", "qwen-7b")  # wakes qwen-7b
        assert done.returncode == 0 and "waking qwen-7b" in done.stdout
        d.wait_up("qwen-7b", 30)
        s = _samples(d.get("/metrics").text)
        assert s[("gpumgr_swap_duration_seconds_count",
                  frozenset({("mode", "sleep"), ("outcome", "ok")}))] == 2
        assert s[("gpumgr_backend_wake_seconds_count", frozenset({("backend", "qwen-7b")}))] == 1
        assert s[("gpumgr_backend_desired_up", frozenset({("backend", "qwen-14b"),
                                                          ("type", "vllm")}))] == 0
        listed = {g["labels"]["gpumgr_backend"]: g["labels"]
                  for g in d.get("/v1/prometheus/targets").json()}
        assert listed["qwen-14b"]["gpumgr_asleep"] == "true"
        assert listed["qwen-7b"]["gpumgr_asleep"] == "false"
        assert d.stop() == 0
    finally:
        b.daemon.cleanup()
