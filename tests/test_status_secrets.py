"""A provider's key never appears in the document, status.json, SSE or /metrics."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest

from gpumgr.api.server import ApiServer
from gpumgr.api.status_app import create_status_app
from gpumgr.config.registry import Provider
from gpumgr.status.document import BackendStatus, DaemonInfo
from gpumgr.status.publisher import StatusPublisher
from gpumgr.redaction import provider_secrets, redactor_for

pytestmark = pytest.mark.anyio

SECRET = "oc-7f3a9c1e5b2d4a6f8e0c"


def test_redactor_replaces_every_provider_key_and_nothing_else() -> None:
    providers = [
        Provider(name="cloud", type="ollama_cloud", base_url="https://ollama.com",
                 env_var="GPUMGR_CLOUD_KEY", requires_api_key=True),
        Provider(name="other", type="openai_compatible", base_url="http://127.0.0.1:9000",
                 env_var="UNSET_KEY"),
        Provider(name="tiny", type="openai_compatible", base_url="http://127.0.0.1:9001",
                 env_var="TINY_KEY"),
    ]
    environ = {"GPUMGR_CLOUD_KEY": SECRET, "TINY_KEY": "ab"}
    redact = redactor_for(provider_secrets(providers, environ))
    assert redact(f"401 Unauthorized (Bearer {SECRET}), again {SECRET}") == (
        "401 Unauthorized (Bearer ***), again ***"
    )
    assert redact("a cab and a tab") == "a cab and a tab", "too-short values are not secrets"


async def test_a_key_echoed_by_a_probe_is_published_nowhere(tmp_path: Path) -> None:
    provider = Provider(
        name="cloud", type="ollama_cloud", base_url="https://ollama.com",
        env_var="GPUMGR_TEST_CLOUD_KEY", requires_api_key=True, models=["gpt-oss:120b", "x"],
    )
    redact = redactor_for(provider_secrets([provider], {"GPUMGR_TEST_CLOUD_KEY": SECRET}))
    pub = StatusPublisher(
        daemon=DaemonInfo(pid=os.getpid(), started_at=datetime.now(UTC)),
        status_path=tmp_path / "status.json",
        redact=redact,
    )
    pub.set_backends(
        [BackendStatus(name="cloud", type="ollama_cloud", base_url=provider.base_url,
                       models=provider.served_names)]
    )
    server = ApiServer.tcp(create_status_app(pub), "127.0.0.1", 0)
    await server.start()
    sse_text: list[str] = []
    try:
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:

            async def follow() -> None:
                async with client.stream("GET", "/v1/events?snapshot=false") as response:
                    async for line in response.aiter_lines():
                        sse_text.append(line)
                        if '"state":"auth_failed"' in line:
                            return

            follower = asyncio.create_task(follow())
            async with asyncio.timeout(5):
                while pub.subscriber_count == 0:
                    await asyncio.sleep(0.01)
            # What a careless probe might hand over: the key in the error text, in a URL and
            # in a per-model reason.
            pub.update_backend(
                "cloud",
                state="auth_failed",
                detail=f"HTTP 401 for Authorization: Bearer {SECRET}",
                base_url=f"https://key:{SECRET}@ollama.com",
                unavailable_models={"x": f"key {SECRET} refused"},
                latency_ms=120.0,
            )
            async with asyncio.timeout(5):
                await follower
            status = (await client.get("/v1/status")).text
            one = (await client.get("/v1/backends/cloud")).text
            metrics = (await client.get("/metrics")).text
        assert pub.flush(5)
        status_file = (tmp_path / "status.json").read_text()
        published = {
            "/v1/status": status, "/v1/backends/cloud": one, "/metrics": metrics,
            "SSE": "\n".join(sse_text), "status.json": status_file,
        }
        for where, text in published.items():
            assert SECRET not in text, f"the key leaked into {where}"
        assert "Bearer ***" in status and "Bearer ***" in published["SSE"], "the hook ran"
        assert 'gpumgr_backend_state{backend="cloud",state="auth_failed"} 1.0' in metrics
    finally:
        pub.close()
        await server.stop()
