"""The first status of each backend, from its ``providers.yaml`` entry (before any probe).

Disabled and template providers are listed as ``disabled`` and never probed; a vLLM provider
gpumgr has not started is ``stopped``; anything else is ``unknown`` until its first probe.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpumgr.backend_state import BackendState
from gpumgr.config.registry import Provider, ProviderStatus
from gpumgr.status.document import BackendStatus


def initial_backend(provider: Provider) -> BackendStatus:
    if not provider.runs_here:
        state, detail = BackendState.DISABLED, f"status: {provider.status.value} in providers.yaml"
    elif provider.is_vllm:
        state, detail = BackendState.STOPPED, None
    else:
        state, detail = BackendState.UNKNOWN, "not probed yet"
    return BackendStatus(
        name=provider.name,
        type=provider.type.value,
        base_url=provider.base_url,
        state=state,
        managed=provider.is_vllm and provider.runs_here,
        models=provider.served_names,
        port=provider.port if provider.status is not ProviderStatus.TEMPLATE else None,
        gpu_memory_utilization=provider.gpu_memory_utilization,
        detail=detail,
    )


def initial_backends(providers: Iterable[Provider]) -> list[BackendStatus]:
    """In registry order, which is the order of the document's ``backends``."""
    return [initial_backend(p) for p in providers]
