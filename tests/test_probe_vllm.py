"""The vLLM probe against a tiny real HTTP server on 127.0.0.1 that plays a vLLM server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx2
import pytest
from fake_http import JsonServer, Reply, Request

from gpumgr.engines.probe_result import ProbeOutcome, ProbeResult
from gpumgr.engines.vllm_probe import parse_metrics, probe_vllm

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="qwen-coder-vllm"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="qwen-coder-vllm"}} {waiting}
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{model_name="qwen-coder-vllm"}} 0.42
"""


class FakeVllm(JsonServer):
    """Answers like vLLM; tests change ``served``, ``health_status``, ``waiting`` or ``hang``."""

    def __init__(self) -> None:
        super().__init__(self._answer)
        self.served = ["qwen-coder-vllm"]
        self.health_status = 200
        self.running = 1
        self.waiting = 0
        self.hang = threading.Event()
        self.release = threading.Event()
        self.api_key: str | None = None
        """Like ``VLLM_API_KEY``: ``/v1/*`` answers 401 without ``Bearer <key>``."""

    def _answer(self, request: Request) -> Reply | None:
        if self.hang.is_set():
            self.release.wait(30)
            return None
        if request.path == "/health":
            return Reply(self.health_status, b"", "text/plain")
        if request.path == "/v1/models":
            if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return Reply(401, {"error": "Unauthorized"})
            return Reply(200, {"object": "list",
                               "data": [{"id": n, "object": "model"} for n in self.served]})
        if request.path == "/metrics":
            text = METRICS.format(running=self.running, waiting=self.waiting)
            return Reply(200, text.encode(), "text/plain; version=0.0.4")
        return Reply(404, {})

    def stop(self) -> None:
        self.release.set()
        super().stop()


@pytest.fixture
def fake_vllm() -> Iterator[FakeVllm]:
    with FakeVllm() as fake:
        yield fake


def probe(
    base_url: str, expected: list[str], timeout_s: float = 1.0, threshold: int = 4,
    api_key: str | None = None,
) -> ProbeResult:
    async def run() -> ProbeResult:
        async with httpx2.AsyncClient() as client:
            return await probe_vllm(client, base_url, expected, timeout_s, threshold, api_key=api_key)

    return asyncio.run(run())


def test_healthy_server_with_the_expected_model_is_ok_with_load_facts(fake_vllm: FakeVllm) -> None:
    r = probe(fake_vllm.base_url, ["qwen-coder-vllm"])
    assert r.outcome is ProbeOutcome.OK
    assert r.running_requests == 1 and r.waiting_requests == 0 and r.busy is False
    assert r.kv_cache_usage == pytest.approx(0.42)
    assert [(m.name, m.available) for m in r.models] == [("qwen-coder-vllm", True)]
    assert r.latency_ms > 0


def test_queue_over_the_threshold_makes_the_backend_busy(fake_vllm: FakeVllm) -> None:
    fake_vllm.waiting = 5
    assert probe(fake_vllm.base_url, ["qwen-coder-vllm"], threshold=4).busy is True
    fake_vllm.waiting = 4
    assert probe(fake_vllm.base_url, ["qwen-coder-vllm"], threshold=4).busy is False


def test_server_answering_with_another_model_is_wrong_model(fake_vllm: FakeVllm) -> None:
    fake_vllm.served = ["deepseek-coder"]
    r = probe(fake_vllm.base_url, ["qwen-coder-vllm"])
    assert r.outcome is ProbeOutcome.WRONG_MODEL
    assert r.detail == "serving deepseek-coder, expected qwen-coder-vllm"
    assert r.models[0].available is False


def test_health_503_is_unhealthy(fake_vllm: FakeVllm) -> None:
    fake_vllm.health_status = 503
    r = probe(fake_vllm.base_url, ["qwen-coder-vllm"])
    assert r.outcome is ProbeOutcome.UNHEALTHY and r.detail == "health 503"


def test_nothing_listening_is_unreachable() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # the port is free again: connections are refused
    r = probe(f"http://127.0.0.1:{port}", ["qwen-coder-vllm"])
    assert r.outcome is ProbeOutcome.UNREACHABLE


def test_hung_server_times_out_within_about_one_timeout(fake_vllm: FakeVllm) -> None:
    fake_vllm.hang.set()
    t0 = time.monotonic()
    r = probe(fake_vllm.base_url, ["qwen-coder-vllm"], timeout_s=0.3)
    elapsed = time.monotonic() - t0
    assert r.outcome is ProbeOutcome.TIMEOUT
    assert 0.25 <= elapsed < 1.5  # one 0.3 s timeout, not the fake's 30 s hang


def test_metrics_parser_sums_model_names_and_rejects_garbage() -> None:
    text = METRICS.format(running=2, waiting=3) + 'vllm:num_requests_waiting{model_name="alias"} 4\n'
    load = parse_metrics(text)
    assert load is not None and load.running == 2 and load.waiting == 7
    assert parse_metrics("not prometheus {{{") is None
    assert parse_metrics("# nothing here\n") is None


def test_a_server_started_with_an_api_key_is_probed_with_it(fake_vllm: FakeVllm) -> None:
    fake_vllm.api_key = "sk-vllm-local-123"
    assert probe(fake_vllm.base_url, ["qwen-coder-vllm"]).outcome is ProbeOutcome.UNHEALTHY
    r = probe(fake_vllm.base_url, ["qwen-coder-vllm"], api_key="sk-vllm-local-123")
    assert r.outcome is ProbeOutcome.OK
    assert "sk-vllm-local-123" not in (r.detail or "")
