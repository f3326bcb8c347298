"""Ollama Cloud probe: ``GET /api/tags`` with the provider's key as a Bearer token.

Quota exhaustion is HTTP 429 with a message and no ``Retry-After`` (DESIGN.md §4): that is
``rate_limited``, not an outage, and the caller must back off exponentially — the probe computes
the wait from how many 429s came in a row and says so in ``detail``. 401/403 are auth failures.
The key is a secret: it is only ever put in the request header, and scrubbed from anything the
server sends back before it reaches ``detail``.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx2

from gpumgr.engines.ollama import canonical_tag, pulled_names
from gpumgr.engines.probe_http import bounded, get, join
from gpumgr.engines.probe_result import (
    ModelAvailability,
    ProbeOutcome,
    ProbeResult,
    Stopwatch,
    short,
)
from gpumgr.redaction import redact

DEFAULT_BASE_URL = "https://ollama.com"
DEFAULT_BACKOFF_CAP_S = 3600.0


def backoff_s(rate_limit_streak: int, base_s: float, cap_s: float = DEFAULT_BACKOFF_CAP_S) -> float:
    """Wait before the next probe after ``rate_limit_streak`` 429s in a row: base × 2^streak, capped.

    The first 429 waits twice the normal interval, the next four times, and so on, so a probe
    never adds to a quota that is already spent.
    """
    if rate_limit_streak <= 0:
        return base_s
    return float(min(cap_s, base_s * (2 ** min(rate_limit_streak, 30))))


def _cloud_name(name: str) -> str:
    """Local Ollama names cloud models ``…-cloud``; ollama.com itself lists them without it."""
    tag = canonical_tag(name)
    return tag[: -len("-cloud")] if tag.endswith("-cloud") else tag


def cloud_availability(
    configured: Sequence[str], listed: Sequence[str]
) -> tuple[ModelAvailability, ...]:
    have = {_cloud_name(n) for n in listed}
    return tuple(
        ModelAvailability(
            n,
            _cloud_name(n) in have,
            "" if _cloud_name(n) in have else "not offered by /api/tags",
        )
        for n in configured
    )


async def probe_ollama_cloud(
    client: httpx2.AsyncClient,
    base_url: str | None,
    api_key: str | None,
    configured_models: Sequence[str],
    timeout_s: float,
    *,
    rate_limit_streak: int = 0,
    interval_s: float = 60.0,
    backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
    key_name: str | None = None,
) -> ProbeResult:
    """One probe of the cloud. ``rate_limit_streak``: 429s in a row before this one.

    ``key_name`` (the environment variable's name, never its value) is used in the detail of a
    missing key so that an operator knows what to set.
    """
    if not api_key:
        what = f"${key_name}" if key_name else "the API key"
        return ProbeResult(ProbeOutcome.AUTH_FAILED, 0.0, f"{what} is not set")
    secrets = (api_key,)
    url = join(base_url or DEFAULT_BASE_URL, "/api/tags")

    async def run(sw: Stopwatch) -> ProbeResult:
        r = await get(client, url, timeout_s, headers={"Authorization": f"Bearer {api_key}"})
        body = short(redact(r.text, secrets), 160)  # redact before the cut
        if r.status_code in (401, 403):
            return ProbeResult(
                ProbeOutcome.AUTH_FAILED, sw.ms(), f"HTTP {r.status_code}: {body or 'unauthorized'}"
            )
        if r.status_code == 429:
            wait_s = backoff_s(rate_limit_streak + 1, interval_s, backoff_cap_s)
            return ProbeResult(
                ProbeOutcome.RATE_LIMITED,
                sw.ms(),
                f"HTTP 429: {body or 'rate limited'}; no Retry-After, backing off "
                f"exponentially: next probe in {wait_s:g} s (429 #{rate_limit_streak + 1} in a row)",
                retry_after_s=wait_s,
            )
        if r.status_code != 200:
            return ProbeResult(ProbeOutcome.UNHEALTHY, sw.ms(), f"HTTP {r.status_code}: {body}")
        try:
            listed = pulled_names(r.json())
        except ValueError:
            return ProbeResult(ProbeOutcome.UNHEALTHY, sw.ms(), "/api/tags: not JSON")
        return ProbeResult(
            ProbeOutcome.OK,
            sw.ms(),
            f"{len(listed)} models offered",
            models=cloud_availability(configured_models, listed),
            served=listed,
        )

    return await bounded(run, timeout_s, "ollama cloud", secrets)
