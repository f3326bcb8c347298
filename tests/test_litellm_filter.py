"""The LiteLLM callback (gpumgr.integrations.litellm) on recorded deployments and statuses.

Deployments are the dicts LiteLLM's router hands ``async_filter_deployments`` (``model_name``,
``litellm_params``, ``model_info``) for the reference box's config; statuses are documents the
daemon's own models serialise. The pure part (parse, map, choose) is tested without I/O; the
follower against a real status server (the daemon's publisher and app) and a fake one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

# Where litellm is installed, importing the callback imports it: keep it offline (no cost-map
# download) as the proxy is run (docs/litellm.md).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gpumgr.api.server import ApiServer  # noqa: E402
from gpumgr.api.status_app import create_status_app  # noqa: E402
from gpumgr.backend_state import BackendState  # noqa: E402
from gpumgr.integrations.litellm import FilterSettings, GpumgrStatusFilter  # noqa: E402
from gpumgr.integrations.litellm.follower import events_url  # noqa: E402
from gpumgr.integrations.litellm.matching import normalise_address  # noqa: E402
from gpumgr.integrations.litellm.status_view import MalformedStatus, parse_backend, parse_document  # noqa: E402
from gpumgr.status.document import BackendStatus, DaemonInfo, StatusDocument  # noqa: E402
from gpumgr.status.publisher import StatusPublisher  # noqa: E402
from tests.fake_http import JsonServer, Reply, Request  # noqa: E402

T0 = datetime(2025, 1, 2, tzinfo=UTC)
URL = "http://127.0.0.1:9400/v1/status"

pytestmark = pytest.mark.anyio


# -- recorded shapes ------------------------------------------------------------------------
def deployment(
    group: str, model: str, api_base: str | None, *, backend: str | None = None, id: str = ""
) -> dict[str, Any]:
    """A deployment as LiteLLM's router passes it (model_info keeps custom keys)."""
    info: dict[str, Any] = {"id": id or f"{group}-{model}", "db_model": False}
    if backend is not None:
        info["gpumgr_backend"] = backend
    params: dict[str, Any] = {"model": model, "use_in_pass_through": False}
    if api_base is not None:
        params["api_base"] = api_base
    return {"model_name": group, "litellm_params": params, "model_info": info}


def backends(**states: BackendState | str) -> list[BackendStatus]:
    """The reference box: qwen-7b and its swap partner qwen-14b share port 8001."""
    spec = {
        "qwen-7b": ("vllm", "http://127.0.0.1:8001", ["qwen-coder-vllm"]),
        "qwen-14b": ("vllm", "http://127.0.0.1:8001", ["qwen-coder-14b-vllm"]),
        "deepseek-6.7b": ("vllm", "http://127.0.0.1:8003", ["deepseek-coder-6.7b-vllm"]),
        "ollama": ("ollama", "http://127.0.0.1:11434", ["qwen2.5-coder:7b", "llama3.1:latest"]),
        "ollama-cloud": ("ollama_cloud", "https://ollama.com", ["qwen3-coder:480b-cloud"]),
    }
    default = {"qwen-7b": "up", "qwen-14b": "stopped", "deepseek-6.7b": "up", "ollama": "up",
               "ollama-cloud": "up"}
    return [
        BackendStatus(name=name, type=t, base_url=url, models=models,
                      state=BackendState(states.get(name.replace("-", "_").replace(".", "_"),
                                                    default[name])))
        for name, (t, url, models) in spec.items()
    ]


def document(bs: list[BackendStatus], *, informed: bool = True, **changes: Any) -> bytes:
    doc = StatusDocument.build(
        generated_at=T0, daemon=DaemonInfo(pid=1, started_at=T0), gpus=[], backends=bs, seq=7,
        adoption_done=informed, first_probe_round_done=informed,
    )
    data = json.loads(doc.to_json_bytes())
    for name, fields in changes.items():
        for b in data["backends"]:
            if b["name"] == name:
                b.update(fields)
    return json.dumps(data).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_filter(doc: bytes | None, *, urls: tuple[str, ...] = (URL,), clock: Clock | None = None,
                max_age_s: float = 5.0) -> tuple[GpumgrStatusFilter, Clock]:
    """A filter whose only follower holds ``doc``, heard from just now (no I/O)."""
    clock = clock or Clock()
    f = GpumgrStatusFilter(FilterSettings(status_urls=urls, max_age_s=max_age_s), clock=clock,
                           autostart=False)
    if doc is not None:
        feed(f, 0, doc)
    return f, clock


def feed(f: GpumgrStatusFilter, host: int, doc: bytes) -> None:
    follower = f.followers[host]
    follower._set(parse_document(doc))


def names(ds: list[dict[str, Any]]) -> list[str]:
    return [d["model_info"]["id"] for d in ds]


VLLM_7B = deployment("qwen-coder-vllm", "hosted_vllm/qwen-coder-vllm", "http://127.0.0.1:8001/v1",
                     id="7b")
VLLM_14B = deployment("qwen-coder-14b-vllm", "hosted_vllm/qwen-coder-14b-vllm",
                      "http://127.0.0.1:8001/v1", id="14b")
DEEPSEEK = deployment("deepseek-coder-6.7b-vllm", "hosted_vllm/deepseek-coder-6.7b-vllm",
                      "http://127.0.0.1:8003/v1", id="ds")
OLLAMA_QWEN = deployment("qwen2.5-coder:7b", "ollama_chat/qwen2.5-coder:7b",
                         "http://127.0.0.1:11434", id="ol-qwen")
CLOUD = deployment("qwen3-coder:480b-cloud", "ollama_chat/qwen3-coder:480b-cloud",
                   "https://ollama.com", id="cloud")
OPENAI = deployment("gpt-4o-mini", "openai/gpt-4o-mini", None, id="openai")


# -- parsing --------------------------------------------------------------------------------
def test_the_parser_reads_the_daemons_document_and_ignores_what_it_does_not_know() -> None:
    raw = json.loads(document(backends()))
    raw["future_field"] = {"x": 1}
    raw["backends"][0]["another_new_field"] = [1, 2]
    status = parse_document(json.dumps(raw))
    assert status.seq == 7 and status.informed
    b = status.backends["qwen-7b"]
    assert (b.state, b.available, b.busy, b.suspect) == ("up", True, False, False)
    assert b.models == {"qwen-coder-vllm"} and b.base_url == "http://127.0.0.1:8001"


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[]", b'{"backends": {}}', b'{"backends": [{"state": "up"}]}',
    b'{"backends": [{"name": "x", "state": 3}]}', b"\xff\xfe",
])
def test_malformed_documents_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedStatus):
        parse_document(raw)


def test_a_backend_without_available_is_available_only_when_up() -> None:
    assert parse_backend({"name": "b", "state": "up"}).available
    assert not parse_backend({"name": "b", "state": "starting"}).available
    assert not parse_backend({"name": "b"}).known  # no state: unknown


def test_documents_without_the_flags_count_as_informed() -> None:
    raw = json.loads(document(backends()))
    del raw["adoption_done"], raw["first_probe_round_done"]
    assert parse_document(json.dumps(raw)).informed


# -- addresses ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", [
    "http://127.0.0.1:8001", "http://localhost:8001/v1", "http://[::1]:8001/v1/",
    "HTTP://LOCALHOST:8001/", "http://0.0.0.0:8001/v1", "http://127.0.0.1:8001/api",
])
def test_every_loopback_spelling_and_api_suffix_is_one_address(variant: str) -> None:
    assert normalise_address(variant) == normalise_address("http://127.0.0.1:8001")


def test_default_ports_are_explicit_and_other_ports_differ() -> None:
    assert normalise_address("https://ollama.com") == normalise_address("https://ollama.com:443/api")
    assert normalise_address("http://127.0.0.1:8001") != normalise_address("http://127.0.0.1:8002")
    assert normalise_address("not a url") is None and normalise_address("http://:x") is None


def test_events_url_sits_beside_the_status_url() -> None:
    assert events_url("http://h:9400/v1/status") == "http://h:9400/v1/events"
    assert events_url("http://h:9400/v1/status/") == "http://h:9400/v1/events"


# -- mapping and choosing -------------------------------------------------------------------
def test_mapping_by_key_drops_a_down_backend() -> None:
    f, _ = make_filter(document(backends(qwen_7b="down")))
    keyed = deployment("code", "hosted_vllm/some-other-name", "http://gpu.example:9999/v1",
                       backend="qwen-7b", id="keyed")
    assert f.filter([keyed, DEEPSEEK]) == [DEEPSEEK]


def test_a_key_naming_no_backend_is_not_filtered() -> None:
    f, _ = make_filter(document(backends()))
    stray = deployment("x", "hosted_vllm/x", None, backend="no-such-backend", id="stray")
    assert f.filter([stray]) == [stray]


@pytest.mark.parametrize("api_base", [
    "http://127.0.0.1:8003/v1", "http://localhost:8003", "http://[::1]:8003/v1/",
])
def test_mapping_by_api_base_variants(api_base: str) -> None:
    f, _ = make_filter(document(backends(deepseek_6_7b="starting")))
    d = deployment("deepseek-coder-6.7b-vllm", "hosted_vllm/deepseek-coder-6.7b-vllm", api_base)
    assert f.filter([d]) == []


def test_two_providers_on_one_port_are_told_apart_by_model() -> None:
    """qwen-7b is up and qwen-14b (its swap partner, same port) is stopped."""
    f, _ = make_filter(document(backends()))
    assert f.filter([VLLM_7B]) == [VLLM_7B]
    assert f.filter([VLLM_14B]) == []
    f2, _ = make_filter(document(backends(qwen_7b="stopped", qwen_14b="up")))
    assert f2.filter([VLLM_7B]) == [] and f2.filter([VLLM_14B]) == [VLLM_14B]


def test_an_unknown_model_on_a_shared_port_is_not_judged() -> None:
    f, _ = make_filter(document(backends(qwen_7b="down")))
    other = deployment("x", "hosted_vllm/not-listed", "http://127.0.0.1:8001/v1", id="other")
    assert f.filter([other]) == [other]


def test_deployments_gpumgr_does_not_know_are_kept() -> None:
    f, _ = make_filter(document(backends(qwen_7b="down")))
    assert f.filter([OPENAI]) == [OPENAI]
    weird: list[Any] = ["not a dict", {"litellm_params": None}, {"model_info": 3}]
    assert f.filter(weird) == weird


def test_a_model_that_is_not_pulled_is_out_while_its_backend_is_up() -> None:
    f, _ = make_filter(document(
        backends(), ollama={"unavailable_models": {"qwen2.5-coder:7b": "not pulled"}}
    ))
    llama = deployment("llama3.1:latest", "ollama_chat/llama3.1:latest", "http://127.0.0.1:11434")
    assert f.filter([OLLAMA_QWEN]) == [] and f.filter([llama]) == [llama]


@pytest.mark.parametrize("state", ["rate_limited", "auth_failed", "down", "sleeping", "draining"])
def test_the_cloud_or_any_not_up_backend_is_out(state: str) -> None:
    f, _ = make_filter(document(backends(ollama_cloud=state)))
    assert f.filter([CLOUD]) == []


CODE_GROUP = [
    deployment("code", "hosted_vllm/qwen-coder-vllm", "http://127.0.0.1:8001/v1", id="a"),
    deployment("code", "hosted_vllm/deepseek-coder-6.7b-vllm", "http://127.0.0.1:8003/v1", id="b"),
]


def test_busy_is_dropped_only_while_another_remains() -> None:
    f, _ = make_filter(document(backends(), **{"qwen-7b": {"busy": True}}))
    assert names(f.filter(CODE_GROUP)) == ["b"]
    f2, _ = make_filter(document(backends(deepseek_6_7b="down"), **{"qwen-7b": {"busy": True}}))
    assert names(f2.filter(CODE_GROUP)) == ["a"]  # a queue beats nothing


def test_suspect_is_dropped_even_when_it_is_the_last() -> None:
    """A failed probe of an ``up`` engine most likely means it hangs: the group's fallbacks take
    over at once rather than after ``retry_attempts`` probes (issue 12: skipped within 1.5 s)."""
    f, _ = make_filter(document(backends(), **{"qwen-7b": {"suspect": True}}))
    assert names(f.filter(CODE_GROUP)) == ["b"]
    f2, _ = make_filter(document(backends(deepseek_6_7b="down"), **{"qwen-7b": {"suspect": True}}))
    assert f2.filter(CODE_GROUP) == []


def test_all_out_returns_an_empty_list_so_fallbacks_fire() -> None:
    f, _ = make_filter(document(backends(qwen_7b="down", deepseek_6_7b="failed")))
    assert f.filter([VLLM_7B, DEEPSEEK]) == []


def test_nothing_dropped_returns_the_same_list() -> None:
    f, _ = make_filter(document(backends()))
    given = [VLLM_7B, DEEPSEEK, OLLAMA_QWEN, CLOUD]
    assert f.filter(given) is given


def test_unknown_and_uninformed_are_never_reasons_to_skip() -> None:
    f, _ = make_filter(document(backends(qwen_7b="unknown")))
    assert f.filter([VLLM_7B]) == [VLLM_7B]
    f2, _ = make_filter(document(backends(qwen_7b="down"), informed=False))
    assert f2.filter([VLLM_7B]) == [VLLM_7B]


def test_a_stale_status_filters_nothing_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    f, clock = make_filter(document(backends(qwen_7b="down")), max_age_s=5.0)
    assert f.filter([VLLM_7B]) == []
    clock.now += 5.5
    with caplog.at_level(logging.INFO, logger="gpumgr.integrations.litellm"):
        for _ in range(3):
            assert f.filter([VLLM_7B]) == [VLLM_7B]
        feed(f, 0, document(backends(qwen_7b="down")))  # heard from again
        assert f.filter([VLLM_7B]) == []
    stale = [r for r in caplog.records if "gpumgr.status.stale" in r.getMessage()]
    assert len(stale) == 1
    assert any("gpumgr.status.fresh" in r.getMessage() for r in caplog.records)


def test_never_heard_from_is_stale() -> None:
    f, _ = make_filter(None)
    assert f.filter([VLLM_7B]) == [VLLM_7B]


def test_several_hosts_a_remote_daemons_loopback_is_its_own_host() -> None:
    local = document(backends(qwen_7b="up"))
    remote = document(backends(qwen_7b="down"))
    f, _ = make_filter(None, urls=(URL, "http://gpu2.example:9400/v1/status"))
    feed(f, 0, local)
    feed(f, 1, remote)
    on_gpu2 = deployment("qwen-coder-vllm", "hosted_vllm/qwen-coder-vllm",
                         "http://gpu2.example:8001/v1", id="gpu2")
    assert f.filter([VLLM_7B, on_gpu2]) == [VLLM_7B]
    # keyed by the same backend name on both hosts: the deployment's address picks the host
    keyed = dict(on_gpu2, model_info={"id": "k", "gpumgr_backend": "qwen-7b"})
    assert f.filter([keyed]) == []


async def test_the_hook_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    f, _ = make_filter(document(backends(qwen_7b="down")))

    def boom(_: Any) -> Any:
        raise RuntimeError("bug")

    f._index.locate = boom  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="gpumgr.integrations.litellm"):
        for _ in range(2):
            out = await f.async_filter_deployments("qwen-coder-vllm", [VLLM_7B], None)
            assert out == [VLLM_7B]
    assert sum("gpumgr.filter.failed" in r.getMessage() for r in caplog.records) == 1


def test_the_module_instance_reads_the_environment_and_imports_nothing_heavy() -> None:
    import subprocess

    code = (  # litellm itself made unimportable: what gpumgr's own part imports
        "import sys; sys.modules['litellm'] = None;"
        "import gpumgr.integrations.litellm as m;"
        "print(m.status_filter.settings.status_urls, m.status_filter.settings.max_age_s);"
        "heavy = [k for k in sys.modules if k.split('.')[0] in ('fastapi', 'pydantic', 'uvicorn')"
        " or k.startswith(('gpumgr.status', 'gpumgr.config', 'gpumgr.daemon'))];"
        "print(heavy)"
    )
    env = dict(os.environ, GPUMGR_STATUS_URL=" http://a:1/v1/status, http://b:2/v1/status ",
               GPUMGR_STATUS_MAX_AGE_S="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.splitlines()
    assert out[0] == "('http://a:1/v1/status', 'http://b:2/v1/status') 3.0"
    assert out[1] == "[]"


# -- the follower against real servers ------------------------------------------------------
@asynccontextmanager
async def status_server(pub: StatusPublisher, heartbeat_s: float = 2.0) -> AsyncIterator[str]:
    server = ApiServer.tcp(create_status_app(pub, heartbeat_s=heartbeat_s), "127.0.0.1", 0)
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/v1/status"
    finally:
        pub.close()
        await server.stop()


def publisher(tmp_path: Path, **states: BackendState | str) -> StatusPublisher:
    pub = StatusPublisher(daemon=DaemonInfo(pid=os.getpid(), started_at=T0),
                          status_path=tmp_path / "status.json")
    pub.set_backends(backends(**states))
    pub.mark_adoption_done()
    pub.mark_first_probe_round_done()
    return pub


async def until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> float:
    """Await a condition the background task brings about; the time it took."""
    start = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)
    return time.monotonic() - start


async def test_the_follower_applies_events_without_polling(tmp_path: Path) -> None:
    pub = publisher(tmp_path)
    async with status_server(pub) as url:
        # Made on the running loop (as LiteLLM imports it), it starts following at once.
        f = GpumgrStatusFilter(FilterSettings(status_urls=(url,), poll_s=30.0))
        try:
            assert f._tasks
            await until(lambda: f.followers[0].streaming)
            pub.update_backend("qwen-7b", state=BackendState.DOWN)
            took = await until(lambda: f.filter([VLLM_7B]) == [])
            assert took < 5.0  # an event, not a 30 s poll (measured: milliseconds)
            assert f.followers[0].status is not None
            assert f.followers[0].status.seq == pub.seq
            pub.update_backend("qwen-7b", state=BackendState.UP)
            await until(lambda: f.filter([VLLM_7B]) == [VLLM_7B])
        finally:
            await f.aclose()


async def test_flags_set_after_connecting_reach_the_follower_by_heartbeat(tmp_path: Path) -> None:
    pub = StatusPublisher(daemon=DaemonInfo(pid=os.getpid(), started_at=T0))
    pub.set_backends(backends(qwen_7b="down"))
    async with status_server(pub, heartbeat_s=0.1) as url:
        f = GpumgrStatusFilter(FilterSettings(status_urls=(url,), poll_s=30.0), autostart=False)
        f.start()
        try:
            await until(lambda: f.followers[0].streaming)
            assert f.filter([VLLM_7B]) == [VLLM_7B]  # not informed yet
            pub.mark_adoption_done()
            pub.mark_first_probe_round_done()
            await until(lambda: f.filter([VLLM_7B]) == [])
        finally:
            await f.aclose()


async def test_a_daemon_that_goes_away_is_stale_after_max_age(tmp_path: Path) -> None:
    pub = publisher(tmp_path, qwen_7b="down")
    server = ApiServer.tcp(create_status_app(pub, heartbeat_s=0.1), "127.0.0.1", 0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}/v1/status"
    f = GpumgrStatusFilter(FilterSettings(status_urls=(url,), max_age_s=0.5, poll_s=0.1),
                           autostart=False)
    f.start()
    try:
        await until(lambda: f.filter([VLLM_7B]) == [])
        pub.close()
        await server.stop()
        took = await until(lambda: f.filter([VLLM_7B]) == [VLLM_7B])
        assert took < 3.0  # max_age_s (0.5) and a loaded machine's slack, not never
    finally:
        await f.aclose()
        pub.close()
        await server.stop()


async def test_without_an_event_stream_it_polls(tmp_path: Path) -> None:
    state = {"doc": document(backends(qwen_7b="down"))}

    def respond(req: Request) -> Reply:
        if req.path == "/v1/status":
            return Reply(200, state["doc"], "application/json")
        return Reply(404, {"detail": "not found"})

    with JsonServer(respond) as server:
        url = server.base_url + "/v1/status"
        f = GpumgrStatusFilter(FilterSettings(status_urls=(url,), poll_s=0.05), autostart=False)
        f.start()
        try:
            await until(lambda: f.filter([VLLM_7B]) == [])
            state["doc"] = document(backends(qwen_7b="up"))
            await until(lambda: f.filter([VLLM_7B]) == [VLLM_7B])
        finally:
            await f.aclose()


async def test_a_malformed_answer_keeps_the_last_good_view(tmp_path: Path) -> None:
    state = {"doc": document(backends(qwen_7b="down"))}

    def respond(req: Request) -> Reply:
        if req.path == "/v1/status":
            return Reply(200, state["doc"], "application/json")
        return Reply(404, {"detail": "not found"})

    with JsonServer(respond) as server:
        url = server.base_url + "/v1/status"
        f = GpumgrStatusFilter(FilterSettings(status_urls=(url,), poll_s=0.05, max_age_s=60),
                               autostart=False)
        f.start()
        try:
            await until(lambda: f.filter([VLLM_7B]) == [])
            polls = len(server.received)
            state["doc"] = b'{"backends": "garbage"}'
            await until(lambda: len(server.received) > polls + 3)
            assert f.filter([VLLM_7B]) == []  # still the last good document
        finally:
            await f.aclose()


def test_inside_litellm_it_is_a_custom_logger() -> None:
    """The router runs ``async_filter_deployments`` only on ``CustomLogger`` instances."""
    custom_logger = pytest.importorskip("litellm.integrations.custom_logger",
                                        reason="litellm not installed")
    from gpumgr.integrations.litellm import status_filter

    assert isinstance(status_filter, custom_logger.CustomLogger)
