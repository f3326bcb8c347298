"""The local Ollama: health probe (``/api/version``, ``/api/tags``, ``/api/ps``) and unloading.

Ollama only evicts its own models and will squeeze one onto the CPU because vLLM holds the card
(DESIGN.md §4), so the probe reports what is loaded, how much of it is in VRAM (the planner
reserves that) and whether it spilled. A configured model that is not pulled is unavailable
with the reason ``not pulled``; the backend itself stays up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import httpx2

from gpumgr.engines.probe_http import bounded, get, join
from gpumgr.engines.probe_result import (
    LoadedModel,
    ModelAvailability,
    ProbeOutcome,
    ProbeResult,
    Stopwatch,
    short,
)

NOT_PULLED = "not pulled"


def canonical_tag(name: str) -> str:
    """Ollama's own name for a model: ``llama3`` is ``llama3:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def pulled_names(body: Any) -> tuple[str, ...]:
    """Names from ``/api/tags`` (``name``, else ``model``), canonicalised."""
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        return ()
    out = []
    for m in models:
        if isinstance(m, dict) and (m.get("name") or m.get("model")):
            out.append(canonical_tag(str(m.get("name") or m.get("model"))))
    return tuple(out)


def loaded_models(body: Any) -> tuple[LoadedModel, ...]:
    """Loaded models from ``/api/ps``; ``size_vram < size`` means spilled to the CPU."""
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        return ()
    out = []
    for m in models:
        if not isinstance(m, dict):
            continue
        size = int(m.get("size") or 0)
        out.append(
            LoadedModel(
                name=canonical_tag(str(m.get("name") or m.get("model") or "?")),
                size_bytes=size,
                size_vram_bytes=int(m.get("size_vram", size) or 0),
                expires_at=m.get("expires_at"),
                context_length=m.get("context_length"),
            )
        )
    return tuple(out)


def availability(
    configured: Iterable[str], pulled: Sequence[str]
) -> tuple[ModelAvailability, ...]:
    """Per configured model: available when pulled, else unavailable with ``not pulled``."""
    have = set(pulled)
    return tuple(
        ModelAvailability(n, canonical_tag(n) in have, "" if canonical_tag(n) in have else NOT_PULLED)
        for n in configured
    )


async def probe_ollama(
    client: httpx2.AsyncClient,
    base_url: str,
    configured_models: Sequence[str],
    timeout_s: float,
) -> ProbeResult:
    """One probe: ``/api/version``, ``/api/tags`` and ``/api/ps`` concurrently."""

    async def run(sw: Stopwatch) -> ProbeResult:
        version_r, tags_r, ps_r = await asyncio.gather(
            get(client, join(base_url, "/api/version"), timeout_s),
            get(client, join(base_url, "/api/tags"), timeout_s),
            get(client, join(base_url, "/api/ps"), timeout_s),
        )
        for what, r in (("/api/version", version_r), ("/api/tags", tags_r), ("/api/ps", ps_r)):
            if r.status_code != 200:
                return ProbeResult(
                    ProbeOutcome.UNHEALTHY, sw.ms(), short(f"{what} {r.status_code}: {r.text}")
                )
        try:
            version = str(version_r.json().get("version", "")) or None
            pulled = pulled_names(tags_r.json())
            loaded = loaded_models(ps_r.json())
        except (ValueError, AttributeError):
            return ProbeResult(ProbeOutcome.UNHEALTHY, sw.ms(), "ollama: answer is not JSON")
        per_model = availability(configured_models, pulled)
        detail = f"ollama {version or '?'}, {len(pulled)} pulled, {len(loaded)} loaded"
        spilled = [m.name for m in loaded if m.spilled]
        if spilled:
            detail += f", spilled to CPU: {', '.join(spilled)}"
        missing = [m.name for m in per_model if not m.available]
        if missing:
            detail += f", {NOT_PULLED}: {', '.join(missing)}"
        return ProbeResult(
            ProbeOutcome.OK,
            sw.ms(),
            short(detail, 300),
            models=per_model,
            version=version,
            loaded=loaded,
            served=pulled,
        )

    return await bounded(run, timeout_s, "ollama")


async def unload_model(
    client: httpx2.AsyncClient, base_url: str, model: str, timeout_s: float
) -> bool:
    """Ask Ollama to drop ``model`` from memory now (``keep_alive: 0``); True when it agreed.

    Errors propagate (``httpx2.HTTPError``): the caller, evicting to make room for a vLLM start,
    must know that the memory was not freed.
    """
    r = await client.post(
        join(base_url, "/api/generate"),
        json={"model": model, "keep_alive": 0},
        timeout=httpx2.Timeout(timeout_s),
    )
    if r.status_code == 404:
        return False
    r.raise_for_status()
    return True
