"""OpenAI-compatible / llama.cpp probe, reached through the by-type dispatcher."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx2
import pytest
from fake_http import JsonServer, Reply, Request

from gpumgr.config.registry import Provider
from gpumgr.engines.probe_result import ProbeOutcome, ProbeResult
from gpumgr.engines.probes import ProbeOptions, is_probed, probe_provider

SECRET = "llama-secret-0c4e"


class FakeLlamaCpp(JsonServer):
    """``/health`` answers ``health_status``; ``/v1/models`` lists a GGUF file like llama.cpp."""

    def __init__(self) -> None:
        super().__init__(self._answer)
        self.health_status = 200

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.received]

    @property
    def auth(self) -> list[str]:
        return [r.headers.get("Authorization", "") for r in self.received]

    def _answer(self, request: Request) -> Reply:
        if request.path == "/health":
            return Reply(self.health_status, {"status": "ok"})
        if request.path == "/v1/models":
            return Reply(200, {"data": [{"id": "/models/qwen2.5-7b-q4_k_m.gguf"}]})
        return Reply(404, {})


@pytest.fixture
def llama() -> Iterator[FakeLlamaCpp]:
    with FakeLlamaCpp() as fake:
        yield fake


def run_probe(provider: Provider, env: dict[str, str] | None = None) -> ProbeResult:
    async def run() -> ProbeResult:
        async with httpx2.AsyncClient() as client:
            # patient: no test here is about a timeout, and a loaded machine may answer slowly
            return await probe_provider(client, provider, ProbeOptions(timeout_s=5.0), env or {})

    return asyncio.run(run())


def test_configured_health_endpoint_is_used_and_models_are_available(llama: FakeLlamaCpp) -> None:
    p = Provider(name="llama", type="llama_cpp", base_url=llama.base_url,
                 health_endpoint="/health", models=["qwen2.5-7b"])
    r = run_probe(p)
    assert r.outcome is ProbeOutcome.OK and llama.paths == ["/health"]
    assert [(m.name, m.available) for m in r.models] == [("qwen2.5-7b", True)]


def test_without_health_endpoint_v1_models_is_probed(llama: FakeLlamaCpp) -> None:
    p = Provider(name="lm", type="openai_compatible", base_url=llama.base_url)
    r = run_probe(p)
    assert llama.paths == ["/v1/models"] and r.served == ("/models/qwen2.5-7b-q4_k_m.gguf",)


def test_error_status_is_unhealthy_and_the_key_travels_only_in_the_header(llama: FakeLlamaCpp) -> None:
    llama.health_status = 500
    p = Provider(name="llama", type="llama_cpp", base_url=llama.base_url, health_endpoint="/health",
                 env_var="LLAMA_KEY", requires_api_key=True)
    r = run_probe(p, {"LLAMA_KEY": SECRET})
    assert r.outcome is ProbeOutcome.UNHEALTHY and r.detail.startswith("HTTP 500")
    assert llama.auth == [f"Bearer {SECRET}"] and SECRET not in r.detail


def test_only_known_types_that_run_here_are_probed() -> None:
    url = "http://127.0.0.1:8001"
    assert is_probed(Provider(type="vllm", base_url=url))
    assert not is_probed(Provider(type="vllm", base_url=url, status="template"))
    assert not is_probed(Provider(type="anthropic", base_url="https://api.anthropic.com"))
