"""Ollama Cloud probe and its back-off, against a fake cloud: a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx2
import pytest
import structlog
from fake_http import JsonServer, Reply, Request

from gpumgr.backend_state import BackendState
from gpumgr.config.registry import HealthChecks, Provider
from gpumgr.config.settings import HealthSettings
from gpumgr.engines.ollama_cloud import backoff_s, probe_ollama_cloud
from gpumgr.engines.probe_result import ProbeOutcome, ProbeResult
from gpumgr.health.machine import Transition
from gpumgr.health.scheduler import HealthScheduler

KEY = "sk-cloud-7f3a9c1e5b2d4f60"  # the secret: must never show up in details or logs


class FakeCloud(JsonServer):
    """Answers ``status`` to every ``GET /api/tags`` and counts the requests."""

    def __init__(self) -> None:
        super().__init__(self._answer)
        self.status = 200

    @property
    def requests(self) -> int:
        return len(self.received)

    @property
    def auth_headers(self) -> list[str]:
        return [r.headers.get("Authorization", "") for r in self.received]

    def _answer(self, request: Request) -> Reply:
        body: object
        if self.status == 200:
            body = {"models": [{"name": "gpt-oss:120b"}, {"name": "qwen3-coder:480b"}]}
        elif self.status == 429:
            body = {"error": "you have reached your weekly usage limit"}
        else:
            # a server that echoes the credential back must not leak it through us
            body = {"error": f"invalid key {request.headers.get('Authorization', '')}"}
        return Reply(self.status, body)


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud() as fake:
        yield fake


def probe(base_url: str, key: str | None, streak: int = 0) -> ProbeResult:
    async def run() -> ProbeResult:
        async with httpx2.AsyncClient() as client:
            return await probe_ollama_cloud(
                client, base_url, key, ["gpt-oss:120b-cloud", "kimi-k2:1t"], 1.0,
                rate_limit_streak=streak, interval_s=60.0, key_name="OLLAMA_CLOUD_KEY",
            )

    return asyncio.run(run())


def test_200_lists_offered_models_and_sends_the_key_as_bearer(cloud: FakeCloud) -> None:
    r = probe(cloud.base_url, KEY)
    assert r.outcome is ProbeOutcome.OK
    assert cloud.auth_headers == [f"Bearer {KEY}"]
    assert [(m.name, m.available) for m in r.models] == [
        ("gpt-oss:120b-cloud", True),  # the local "-cloud" name of a model ollama.com offers
        ("kimi-k2:1t", False),
    ]


def test_429_is_rate_limited_with_exponential_backoff_stated_in_detail(cloud: FakeCloud) -> None:
    cloud.status = 429
    first = probe(cloud.base_url, KEY, streak=0)
    third = probe(cloud.base_url, KEY, streak=2)
    assert first.outcome is ProbeOutcome.RATE_LIMITED
    assert first.retry_after_s == 120.0 and third.retry_after_s == 480.0
    assert "weekly usage limit" in first.detail
    assert "no Retry-After, backing off exponentially: next probe in 120 s" in first.detail


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_auth_failures_and_the_echoed_key_is_scrubbed(
    cloud: FakeCloud, status: int
) -> None:
    cloud.status = status
    r = probe(cloud.base_url, KEY)
    assert r.outcome is ProbeOutcome.AUTH_FAILED
    assert KEY not in r.detail and "***" in r.detail


def test_missing_key_is_an_auth_failure_naming_the_variable_not_a_request(cloud: FakeCloud) -> None:
    r = probe(cloud.base_url, None)
    assert r.outcome is ProbeOutcome.AUTH_FAILED and r.detail == "$OLLAMA_CLOUD_KEY is not set"
    assert cloud.requests == 0


def test_network_error_is_unreachable_so_the_machine_counts_it_as_down() -> None:
    r = probe("http://127.0.0.1:9", KEY)
    assert r.outcome is ProbeOutcome.UNREACHABLE and KEY not in r.detail


def test_backoff_doubles_from_the_interval_and_is_capped() -> None:
    assert [backoff_s(n, 60.0, 600.0) for n in (1, 2, 3, 4, 5)] == [120, 240, 480, 600, 600]


def test_scheduler_backs_off_on_429_and_never_logs_the_key(
    cloud: FakeCloud, caplog: pytest.LogCaptureFixture
) -> None:
    """With a 0.05 s cloud interval, 1.2 s of plain polling would be ~24 requests; backing off
    0.1, 0.2, 0.4, 0.8 s after consecutive 429s leaves only a handful."""
    cloud.status = 429
    provider = Provider(
        name="ollama-cloud", type="ollama_cloud", base_url=cloud.base_url,
        env_var="OLLAMA_CLOUD_KEY", models=["gpt-oss:120b-cloud"],
    )
    settings = HealthSettings(cloud_interval_s=0.05, jitter_s=0.0, timeout_s=0.5)
    transitions: list[Transition] = []
    caplog.set_level(logging.DEBUG)

    async def run() -> tuple[BackendState, str]:
        async with httpx2.AsyncClient() as client:
            sched = HealthScheduler(
                {"ollama-cloud": provider}, settings, HealthChecks(), client,
                on_transition=transitions.append, env={"OLLAMA_CLOUD_KEY": KEY},
            )
            sched.start()
            try:
                await asyncio.sleep(1.2)
            finally:
                await sched.stop()
            h = sched.health("ollama-cloud")
            return h.state, h.reason

    with structlog.testing.capture_logs() as logs:
        state, reason = asyncio.run(run())
    assert state is BackendState.RATE_LIMITED
    assert 2 <= cloud.requests <= 6, cloud.requests
    assert "backing off" in reason
    assert [t.new for t in transitions] == [BackendState.RATE_LIMITED]
    assert any(e.get("event") == "backend.state" for e in logs)
    assert KEY not in repr(logs) and KEY not in caplog.text and KEY not in reason
