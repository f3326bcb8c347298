"""Which probe a provider gets, by type, and the inputs each one needs from the registry.

The key of a provider is read from the environment mapping passed in (the daemon passes its
environment once); only the variable's *name* lives in ``providers.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx2

from gpumgr.config.registry import Provider, ProviderType
from gpumgr.engines.ollama import probe_ollama
from gpumgr.engines.ollama_cloud import DEFAULT_BACKOFF_CAP_S, probe_ollama_cloud
from gpumgr.engines.openai_compat import probe_openai_compat
from gpumgr.engines.probe_result import ProbeOutcome, ProbeResult
from gpumgr.engines.vllm_probe import probe_vllm
from gpumgr.secrets import read_secret

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"

OPENAI_COMPATIBLE_TYPES = frozenset(
    {
        ProviderType.OPENAI_COMPATIBLE,
        ProviderType.LLAMA_CPP,
        ProviderType.LM_STUDIO,
        ProviderType.TGI,
    }
)
PROBED_TYPES = frozenset(
    {ProviderType.VLLM, ProviderType.OLLAMA, ProviderType.OLLAMA_CLOUD} | OPENAI_COMPATIBLE_TYPES
)


def is_probed(provider: Provider) -> bool:
    """Active/standby providers of a type gpumgr knows how to probe (others keep a fixed state)."""
    return provider.runs_here and provider.type in PROBED_TYPES


def is_cloud(provider: Provider) -> bool:
    """Probed on the cloud interval, with back-off on 429: remote quota, not a local process."""
    return provider.type is ProviderType.OLLAMA_CLOUD


@dataclass(frozen=True)
class ProbeOptions:
    """Per-call knobs the scheduler owns (timeouts and back-off state are not the registry's)."""

    timeout_s: float = 1.0
    busy_waiting_threshold: int = 4
    rate_limit_streak: int = 0
    cloud_interval_s: float = 60.0
    backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S


def api_key_of(provider: Provider, env: Mapping[str, str]) -> str | None:
    return read_secret(provider.env_var, env)


async def probe_provider(
    client: httpx2.AsyncClient,
    provider: Provider,
    options: ProbeOptions,
    env: Mapping[str, str],
) -> ProbeResult:
    """Run the probe that fits ``provider.type`` once."""
    names = provider.served_names
    t = options.timeout_s
    if provider.type is ProviderType.VLLM:
        if not provider.base_url:
            return ProbeResult(ProbeOutcome.UNREACHABLE, 0.0, "no base_url")
        return await probe_vllm(
            client, provider.base_url, names, t, options.busy_waiting_threshold,
            api_key=api_key_of(provider, env),
        )
    if provider.type is ProviderType.OLLAMA:
        return await probe_ollama(client, provider.base_url or DEFAULT_OLLAMA_URL, names, t)
    if provider.type is ProviderType.OLLAMA_CLOUD:
        return await probe_ollama_cloud(
            client,
            provider.base_url,
            api_key_of(provider, env),
            names,
            t,
            rate_limit_streak=options.rate_limit_streak,
            interval_s=options.cloud_interval_s,
            backoff_cap_s=options.backoff_cap_s,
            key_name=provider.env_var,
        )
    if provider.type in OPENAI_COMPATIBLE_TYPES:
        if not provider.base_url:
            return ProbeResult(ProbeOutcome.UNREACHABLE, 0.0, "no base_url")
        return await probe_openai_compat(
            client,
            provider.base_url,
            names,
            t,
            health_endpoint=provider.health_endpoint,
            api_key=api_key_of(provider, env),
        )
    raise ValueError(f"no probe for provider type {provider.type}")
