"""The callback's side of the lifecycle policies: it counts the requests it could not send to a
model gpumgr may swap in on demand and reports them (at most once a second per name, never in a
pick's way, silently on failure) to the daemon's ``POST /v1/demand``; with ``hold_s`` it waits
for a group's only local deployment that is about to be up instead of using the fallbacks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx2
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gpumgr.api.demand_app import add_demand_route  # noqa: E402
from gpumgr.api.server import ApiServer  # noqa: E402
from gpumgr.api.status_app import create_status_app  # noqa: E402
from gpumgr.integrations.litellm import FilterSettings, GpumgrStatusFilter  # noqa: E402
from gpumgr.integrations.litellm.demand_report import DemandReporter, demand_url  # noqa: E402
from test_litellm_filter import (  # noqa: E402
    VLLM_7B,
    VLLM_14B,
    Clock,
    backends,
    document,
    feed,
    publisher,
    until,
)

pytestmark = pytest.mark.anyio
URL = "http://127.0.0.1:9400/v1/status"
DEMAND = {"mode": "demand", "pinned": False}


def filter_with(doc: bytes, **settings: Any) -> tuple[GpumgrStatusFilter, Clock]:
    clock = Clock()
    f = GpumgrStatusFilter(FilterSettings(status_urls=(URL,), **settings), clock=clock,
                           autostart=False)
    feed(f, 0, doc)
    return f, clock


async def test_misses_of_a_swapped_out_demand_model_are_counted_without_delaying_the_pick() -> None:
    doc = document(backends(), **{"qwen-14b": {"policy": DEMAND}})
    f, clock = filter_with(doc)
    assert f.demand is not None
    for _ in range(5):
        assert await f.async_filter_deployments("qwen-coder-14b-vllm", [VLLM_14B], None) == []
    assert await f.async_filter_deployments("qwen-coder-vllm", [VLLM_7B], None) == [VLLM_7B]
    assert f.demand.due(0) == {"qwen-14b": 5}
    await f.async_filter_deployments("qwen-coder-14b-vllm", [VLLM_14B], None)
    assert f.demand.due(0) == {}  # at most once a second per name
    clock.now += 1.0
    assert f.demand.due(0) == {"qwen-14b": 1}


async def test_a_manual_model_or_one_that_is_loading_is_not_reported() -> None:
    manual = document(backends())  # no policy: manual
    f, _ = filter_with(manual)
    await f.async_filter_deployments("qwen-coder-14b-vllm", [VLLM_14B], None)
    loading = document(backends(qwen_14b="starting"), **{"qwen-14b": {"policy": DEMAND}})
    g, _ = filter_with(loading)
    await g.async_filter_deployments("qwen-coder-14b-vllm", [VLLM_14B], None)
    assert f.demand is not None and g.demand is not None
    assert f.demand.due(0) == {} and g.demand.due(0) == {}


def test_reporting_is_off_with_the_variable() -> None:
    settings = FilterSettings.from_env({"GPUMGR_DEMAND_REPORTS": "0", "GPUMGR_HOLD_S": "2"})
    assert settings.report_demand is False and settings.hold_s == 2.0
    assert FilterSettings.from_env({"GPUMGR_HOLD_S": "-1"}).hold_s == 0.0
    assert "tok" not in repr(FilterSettings.from_env({"GPUMGR_CONTROL_TOKEN": "tok" * 8}))


async def test_the_reports_reach_the_daemons_endpoint_and_a_dead_daemon_is_silent(
        tmp_path: Path) -> None:
    got: list[dict[str, int]] = []

    def report(counts: Mapping[str, int]) -> dict[str, Any]:
        got.append(dict(counts))
        return {"accepted": dict(counts), "ignored": {}}

    app = create_status_app(publisher(tmp_path))
    add_demand_route(app, report, token=None)
    server = ApiServer.tcp(app, "127.0.0.1", 0)
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/v1/status"
        reporter = DemandReporter((url, "http://127.0.0.1:9/v1/status"))
        task = asyncio.get_running_loop().create_task(reporter.run())
        reporter.note(0, "qwen-14b")
        reporter.note(0, "qwen-14b")
        reporter.note(1, "qwen-14b")  # nobody listens there: dropped, no exception
        await until(lambda: got == [{"qwen-14b": 2}])
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with httpx2.AsyncClient() as client:
            too_many = {"counts": {f"m{i}": 1 for i in range(65)}}
            assert (await client.post(demand_url(url), json=too_many)).status_code == 422
            huge = {"counts": {"qwen-14b": 1}, "pad": "x" * 9000}
            assert (await client.post(demand_url(url), json=huge)).status_code == 413
            negative = {"counts": {"qwen-14b": -1}}
            assert (await client.post(demand_url(url), json=negative)).status_code == 422
        assert got == [{"qwen-14b": 2}]
    finally:
        await server.stop()


async def test_with_a_token_a_report_without_it_is_refused(tmp_path: Path) -> None:
    got: list[dict[str, int]] = []
    app = create_status_app(publisher(tmp_path))
    add_demand_route(app, lambda c: got.append(dict(c)) or {"accepted": {}, "ignored": {}},
                     token="t" * 20)
    server = ApiServer.tcp(app, "127.0.0.1", 0)
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/v1/demand"
        async with httpx2.AsyncClient() as client:
            body = {"counts": {"qwen-14b": 1}}
            assert (await client.post(url, json=body)).status_code == 401
            ok = await client.post(url, json=body, headers={"Authorization": "Bearer " + "t" * 20})
            assert ok.status_code == 200
        assert got == [{"qwen-14b": 1}]
    finally:
        await server.stop()


async def test_hold_waits_for_the_only_local_deployment_that_is_about_to_be_up() -> None:
    loading = document(backends(qwen_14b="starting"), **{"qwen-14b": {"eta_s": 0.3}})
    f, clock = filter_with(loading, hold_s=2.0)
    f._clock = asyncio.get_running_loop().time  # the hold's deadline runs on real time
    f.followers[0]._clock = f._clock
    feed(f, 0, loading)

    async def up_soon() -> None:
        await asyncio.sleep(0.3)
        feed(f, 0, document(backends(qwen_14b="up")))

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    _, out = await asyncio.gather(up_soon(), f.async_filter_deployments(
        "qwen-coder-14b-vllm", [VLLM_14B], None))
    assert out == [VLLM_14B]
    assert 0.25 < loop.time() - t0 < 1.5


async def test_hold_is_off_by_default_and_never_waits_past_hold_s_or_for_a_long_load() -> None:
    loading = document(backends(qwen_14b="starting"), **{"qwen-14b": {"eta_s": 0.3}})
    f, _ = filter_with(loading)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await f.async_filter_deployments("qwen-coder-14b-vllm", [VLLM_14B], None) == []
    assert loop.time() - t0 < 1.0  # no hold: at once (a hold would be 2 s below)
    g, _ = filter_with(loading, hold_s=0.4)
    g._clock = g.followers[0]._clock = loop.time
    feed(g, 0, loading)
    t0 = loop.time()
    assert await g.async_filter_deployments("qwen-coder-14b-vllm", [VLLM_14B], None) == []
    assert 0.35 < loop.time() - t0 < 1.5  # held for hold_s (0.4), then the fallbacks
    slow = document(backends(qwen_14b="starting"), **{"qwen-14b": {"eta_s": 30}})
    h, _ = filter_with(slow, hold_s=2.0)
    t0 = loop.time()
    assert await h.async_filter_deployments("qwen-coder-14b-vllm", [VLLM_14B], None) == []
    assert loop.time() - t0 < 1.0  # not held for its hold_s of 2 s
