"""The HTTP edge shared by every probe: one bounded GET, and transport errors turned into outcomes.

No retries here: a probe is one attempt, the scheduler decides when to try again and the state
machine how many failures make a backend ``down``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urljoin

import httpx2

from gpumgr.engines.probe_result import ProbeOutcome, ProbeResult, Stopwatch, short
from gpumgr.redaction import redact


def join(base_url: str, path: str) -> str:
    """``base_url`` + ``path``; an absolute ``path`` (a configured health URL) wins."""
    if path.startswith(("http://", "https://")):
        return path
    return urljoin(base_url.rstrip("/") + "/", path.lstrip("/"))


async def get(
    client: httpx2.AsyncClient,
    url: str,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
) -> httpx2.Response:
    """One GET with the probe's timeout on every phase (connect, read, write, pool)."""
    return await client.get(url, headers=dict(headers or {}), timeout=httpx2.Timeout(timeout_s))


def failure_from_exception(
    exc: BaseException, sw: Stopwatch, what: str, secrets: tuple[str, ...] = ()
) -> ProbeResult:
    """Map a transport error to ``timeout`` (hung) or ``unreachable`` (nothing listening)."""
    if isinstance(exc, (httpx2.TimeoutException, asyncio.TimeoutError, TimeoutError)):
        return ProbeResult(ProbeOutcome.TIMEOUT, sw.ms(), f"{what}: no answer (timeout)")
    name = type(exc).__name__
    text = short(redact(str(exc) or name, secrets))  # redact first: a cut key no longer matches
    return ProbeResult(ProbeOutcome.UNREACHABLE, sw.ms(), f"{what}: {name}: {text}")


async def bounded(
    probe: Callable[[Stopwatch], Awaitable[ProbeResult]],
    timeout_s: float,
    what: str,
    secrets: tuple[str, ...] = (),
) -> ProbeResult:
    """Run a (possibly multi-request) probe under one overall deadline, mapping transport errors.

    Each request carries ``timeout_s`` too, but a probe that makes three requests must still
    finish within about one timeout, or a hung server would take three times as long to detect.
    """
    sw = Stopwatch()
    try:
        async with asyncio.timeout(timeout_s):
            return await probe(sw)
    except (httpx2.RequestError, OSError, TimeoutError) as exc:
        return failure_from_exception(exc, sw, what, secrets)
