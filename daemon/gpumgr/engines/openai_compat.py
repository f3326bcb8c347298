"""Probe of any other OpenAI-compatible server (``openai_compatible``, ``llama_cpp``, LM Studio, TGI).

The provider's ``health_endpoint`` when it has one, else ``/v1/models``. Such servers often list
a file name rather than the configured model name (llama.cpp lists its GGUF path), so the model
list is not held against them: a 2xx answer is up, and every configured model is available.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx2

from gpumgr.engines.probe_http import bounded, get, join
from gpumgr.engines.probe_result import (
    ModelAvailability,
    ProbeOutcome,
    ProbeResult,
    Stopwatch,
    short,
)
from gpumgr.redaction import redact
from gpumgr.engines.vllm_probe import served_model_ids


async def probe_openai_compat(
    client: httpx2.AsyncClient,
    base_url: str,
    configured_models: Sequence[str],
    timeout_s: float,
    *,
    health_endpoint: str | None = None,
    api_key: str | None = None,
) -> ProbeResult:
    """One GET of the health endpoint (or ``/v1/models``); 401/403 are ``auth_failed``."""
    secrets = (api_key,) if api_key else ()
    url = join(base_url, health_endpoint or "/v1/models")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def run(sw: Stopwatch) -> ProbeResult:
        r = await get(client, url, timeout_s, headers=headers)
        if r.status_code in (401, 403):
            return ProbeResult(ProbeOutcome.AUTH_FAILED, sw.ms(), f"HTTP {r.status_code}")
        if r.status_code == 429:
            return ProbeResult(ProbeOutcome.RATE_LIMITED, sw.ms(), "HTTP 429")
        if not 200 <= r.status_code < 300:
            body = short(redact(r.text, secrets), 160)  # redact before the cut
            return ProbeResult(ProbeOutcome.UNHEALTHY, sw.ms(), f"HTTP {r.status_code}: {body}")
        served: tuple[str, ...] = ()
        if r.headers.get("content-type", "").startswith("application/json"):
            try:
                served = served_model_ids(r.json())
            except ValueError:
                served = ()
        return ProbeResult(
            ProbeOutcome.OK,
            sw.ms(),
            f"HTTP {r.status_code}",
            models=tuple(ModelAvailability(n, True) for n in configured_models),
            served=served,
        )

    return await bounded(run, timeout_s, "openai-compatible", secrets)
