"""Health probe of a vLLM OpenAI-compatible server.

``/is_sleeping`` says whether it is asleep (vLLM's sleep endpoints need no API key, so anyone
on the host may have put it to sleep; an engine without sleep mode answers 404, read as awake);
``/health`` says the engine is alive; ``/v1/models`` says *which* model answers on the port
(today's same-port switching leaves a server answering with the wrong model, which must read as
``down``); ``/metrics`` gives the queue that makes a backend ``busy``. ``/metrics`` is advisory:
a server whose metrics cannot be read is still up, only its ``busy`` is unknown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import httpx2
from prometheus_client.parser import text_string_to_metric_families

from gpumgr.engines.probe_http import bounded, get, join
from gpumgr.engines.probe_result import (
    ModelAvailability,
    ProbeOutcome,
    ProbeResult,
    Stopwatch,
    short,
)

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
FINISHED = "vllm:request_success_total"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name, pre-0.10 name


@dataclass(frozen=True)
class VllmLoad:
    """The ``/metrics`` gauges gpumgr reads, summed over the server's model names."""

    running: int
    waiting: int
    kv_cache_usage: float | None
    finished: int | None = None
    """Requests finished since the engine started (None when it does not say)."""


def parse_metrics(text: str) -> VllmLoad | None:
    """Running/waiting requests and KV-cache usage (0–1) from Prometheus text; None if absent."""
    running = waiting = 0
    kv: float | None = None
    finished: int | None = None
    seen = False
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == RUNNING:
                    running += int(sample.value)
                    seen = True
                elif sample.name == WAITING:
                    waiting += int(sample.value)
                    seen = True
                elif sample.name in KV_USAGE:
                    kv = max(kv or 0.0, float(sample.value))
                elif sample.name == FINISHED:
                    finished = (finished or 0) + int(sample.value)
    except ValueError:
        return None
    return VllmLoad(running, waiting, kv, finished) if seen else None


def served_model_ids(body: object) -> tuple[str, ...]:
    """The ``id`` of every entry of an OpenAI ``/v1/models`` answer (empty if the shape is wrong)."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return ()
    return tuple(str(m["id"]) for m in body["data"] if isinstance(m, dict) and "id" in m)


def check_served(
    served: Sequence[str], expected: Sequence[str]
) -> tuple[bool, tuple[ModelAvailability, ...], str]:
    """Does the server serve what this backend is configured for? (ok, per-model, detail)."""
    per_model = tuple(
        ModelAvailability(n, n in served, "" if n in served else f"not served (serving {', '.join(served) or 'nothing'})")
        for n in expected
    )
    if not expected or any(m.available for m in per_model):
        return True, per_model, ""
    return False, per_model, f"serving {', '.join(served) or 'nothing'}, expected {', '.join(expected)}"


def _asleep(resp: object) -> bool:
    if not isinstance(resp, httpx2.Response) or resp.status_code != 200:
        return False
    try:
        body = resp.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("is_sleeping") is True


async def probe_vllm(
    client: httpx2.AsyncClient,
    base_url: str,
    expected_names: Sequence[str],
    timeout_s: float,
    busy_waiting_threshold: int = 4,
    api_key: str | None = None,
) -> ProbeResult:
    """One probe: ``/health``, then ``/v1/models`` and ``/metrics`` concurrently.

    ``api_key``: a server started with ``VLLM_API_KEY`` answers 401 on ``/v1/*`` without it.
    """
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else None

    async def run(sw: Stopwatch) -> ProbeResult:
        health = await get(client, join(base_url, "/health"), timeout_s)
        if health.status_code != 200:
            return ProbeResult(
                ProbeOutcome.UNHEALTHY, sw.ms(), f"health {health.status_code}"
            )
        models_resp, metrics_resp, sleeping_resp = await asyncio.gather(
            get(client, join(base_url, "/v1/models"), timeout_s, headers=auth),
            get(client, join(base_url, "/metrics"), timeout_s),
            get(client, join(base_url, "/is_sleeping"), timeout_s),
            return_exceptions=True,
        )
        if _asleep(sleeping_resp):
            return ProbeResult(ProbeOutcome.ASLEEP, sw.ms(), "engine asleep (/is_sleeping)")
        if isinstance(models_resp, BaseException):
            raise models_resp
        if models_resp.status_code != 200:
            return ProbeResult(
                ProbeOutcome.UNHEALTHY, sw.ms(), f"/v1/models {models_resp.status_code}"
            )
        try:
            served = served_model_ids(models_resp.json())
        except ValueError:
            return ProbeResult(ProbeOutcome.UNHEALTHY, sw.ms(), "/v1/models: not JSON")
        ok, per_model, why = check_served(served, expected_names)
        load = None
        if isinstance(metrics_resp, httpx2.Response) and metrics_resp.status_code == 200:
            load = parse_metrics(metrics_resp.text)
        latency = sw.ms()
        if not ok:
            return ProbeResult(
                ProbeOutcome.WRONG_MODEL, latency, why, models=per_model, served=served
            )
        busy = None if load is None else load.waiting > busy_waiting_threshold
        detail = "health 200"
        if load is not None:
            detail += f", running {load.running}, waiting {load.waiting}"
            if load.kv_cache_usage is not None:
                detail += f", kv {load.kv_cache_usage:.0%}"
        return ProbeResult(
            ProbeOutcome.OK,
            latency,
            short(detail),
            models=per_model,
            running_requests=None if load is None else load.running,
            waiting_requests=None if load is None else load.waiting,
            kv_cache_usage=None if load is None else load.kv_cache_usage,
            busy=busy,
            served=served,
        )

    return await bounded(run, timeout_s, "vllm")
