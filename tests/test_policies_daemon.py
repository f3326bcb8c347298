"""End to end on the simulated card: the LiteLLM callback (following a real daemon) reports the
requests it cannot send to the 14B while the 7B holds their shared port; the daemon's demand
policy swaps the 14B in through the reconciler; the callback then sends to it; the 14B's idle
timer (shown in the status and by ``gpumgr status``) swaps the 7B back once it is quiet."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx2
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gpumgr.sim.harness import (  # noqa: E402
    FAST_HEALTH_YAML,
    FAST_LIFECYCLE_YAML,
    DaemonHarness,
    free_port,
    wait_for,
)
from gpumgr.integrations.litellm import FilterSettings, GpumgrStatusFilter  # noqa: E402
from test_litellm_filter import deployment  # noqa: E402

pytestmark = pytest.mark.slow

SETTINGS = FAST_HEALTH_YAML.format(restart_after_s=60) + FAST_LIFECYCLE_YAML + """
policies:
  check_interval_s: 0.2
  demand:
    min_residency_s: 0
    window_s: 30
    min_requests: 2
    max_swaps_per_hour: 4
"""


def registry(port: int) -> str:
    def one(name: str, repo: str, status: str, extra: str) -> str:
        return f"""
  {name}:
    type: vllm
    base_url: http://127.0.0.1:{port}
    status: {status}
    max_model_len: 4096
    max_num_seqs: 2
    policy: demand{extra}
    models:
      - name: {name}-served
        hf_repo: {repo}
"""
    return "providers:" + one("small", "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "active", "") + one(
        "large", "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ", "standby",
        "\n    idle: {after_s: 3, swap_to: small}")


def test_the_callbacks_reports_swap_the_wanted_model_in_and_idle_swaps_the_default_back(
        tmp_path: Path) -> None:
    port = free_port()
    d = DaemonHarness(tmp_path, registry(port), SETTINGS)
    try:
        d.start()
        d.wait_up("small", 30)
        large = deployment("large-served", "hosted_vllm/large-served",
                           f"http://127.0.0.1:{port}/v1", id="14b")

        async def route() -> None:
            f = GpumgrStatusFilter(FilterSettings(status_urls=(f"{d.base_url}/v1/status",)))
            try:
                await asyncio.sleep(0.5)
                for _ in range(12):  # the fallbacks take these at once: nothing is held
                    t0 = asyncio.get_running_loop().time()
                    out = await f.async_filter_deployments("large-served", [large], None)
                    assert asyncio.get_running_loop().time() - t0 < 0.5  # no I/O, no wait
                    if out:
                        break
                    await asyncio.sleep(0.4)
                async with asyncio.timeout(30):
                    while not await f.async_filter_deployments("large-served", [large], None):
                        await asyncio.sleep(0.1)
                assert f.demand is not None and f.demand.sent >= 1
            finally:
                await f.aclose()

        asyncio.run(route())
        d.wait_up("large", 30)
        assert d.backend("small")["state"] == "stopped"
        policy = d.wait_backend("large", lambda b: b["policy"].get("reason") == "swap done",
                                10)["policy"]
        assert policy["mode"] == "demand" and policy["last_decision"] == "swap"
        assert policy["swaps_last_hour"] == 1 and policy["max_swaps_per_hour"] == 4
        assert 0 <= d.backend("large")["idle_action_in_s"] <= 3
        d.env["GPUMGR_LISTEN"] = d.base_url.removeprefix("http://")
        shown = d.cli("status")
        assert shown.returncode == 0, shown.stderr
        assert "idle: swap to small after 3 s without requests" in shown.stdout
        assert "demand:" in shown.stdout and "last: fill" not in shown.stdout
        # quiet for 3 s: the idle action swaps the default back, once
        d.wait_up("small", 30)
        wait_for(lambda: d.backend("large")["state"] == "stopped", 30, "large stopped")
        events = d.events()
        assert [e["action"] for e in events if e.get("event") == "policy.idle"] == ["swap"]
        assert [e["made"] for e in events if e.get("event") == "policy.decision"] == [
            "swap small → large"]
        with httpx2.Client() as c:  # from loopback without a token: accepted, counts only
            r = c.post(f"{d.base_url}/v1/demand", json={"counts": {"small": 3, "nope": 1}})
        assert r.status_code == 200
        assert r.json() == {"accepted": {}, "ignored": {
            "small": "resident", "nope": "not a provider under policy: demand"}}
        assert d.stop() == 0
    finally:
        d.cleanup()
