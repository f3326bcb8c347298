"""Prometheus HTTP service discovery: the engines gpumgr means to be up, as scrape targets.

``GET /v1/prometheus/targets`` serves this list in the ``http_sd_configs`` format (a JSON list of
``{"targets": ["host:port"], "labels": {…}}``). A static scrape target cannot follow a swap and
cannot tell a model stopped on purpose from one that died; this list can: a vLLM engine is listed
while it is in the desired state (started, swapped in, or kept asleep), so once it is stopped on
purpose it leaves the list and ``up == 0`` on a listed target means an outage. A sleeping engine
stays (its process and ``/metrics`` live on), labelled ``gpumgr_asleep="true"``.

Labels are stable through a backend's life (they become part of every scraped series, so a
label that changed with the state would split them): ``gpumgr_backend``, ``model_name`` (the
served model name, the label vLLM's own metrics and its Grafana dashboards key on), ``gpu``,
``provider_type``; only ``gpumgr_asleep`` changes, on a sleep or a wake.

Ollama is listed while it is ``active`` in the registry; it serves no Prometheus metrics of its
own, so its target is for an exporter or a probe the owner points at it (docs/monitoring.md).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from gpumgr.config.registry import Provider, ProviderStatus, ProviderType
from gpumgr.status.document import StatusDocument

TargetGroup = dict[str, Any]

LABEL_BACKEND = "gpumgr_backend"
LABEL_ASLEEP = "gpumgr_asleep"


def _address(provider: Provider, port: int | None) -> str | None:
    host, port = provider.host, port or provider.port
    if not host or port is None:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def prometheus_targets(
    doc: StatusDocument,
    providers: Mapping[str, Provider],
    running: Collection[str],
    asleep: Collection[str],
) -> list[TargetGroup]:
    """One target group per engine that should be up (or asleep), in the registry's order.

    ``running``: the managed engines of the desired state (asleep ones included); ``asleep``:
    those of them kept asleep."""
    groups: list[TargetGroup] = []
    for b in doc.backends:
        p = providers.get(b.name)
        if p is None:
            continue
        if p.type is ProviderType.VLLM:
            if b.name not in running:
                continue
            address = _address(p, b.port)
            labels = {
                LABEL_BACKEND: p.name,
                "model_name": p.served_model_name or "",
                "gpu": str(p.gpu),
                "provider_type": p.type.value,
                LABEL_ASLEEP: "true" if b.name in asleep else "false",
            }
        elif p.type is ProviderType.OLLAMA:
            if p.status is not ProviderStatus.ACTIVE:
                continue
            address = _address(p, None)
            labels = {LABEL_BACKEND: p.name, "gpu": str(p.gpu),
                      "provider_type": p.type.value, LABEL_ASLEEP: "false"}
        else:
            continue
        if address is None:
            continue
        groups.append({"targets": [address], "labels": {k: v for k, v in labels.items() if v}})
    return groups


def desired_up(
    providers: Mapping[str, Provider], running: Collection[str], asleep: Collection[str]
) -> dict[str, bool]:
    """Backend → whether gpumgr means it to serve now: a managed engine of the desired state
    that is not kept asleep; any other backend while the registry marks it ``active``."""
    out: dict[str, bool] = {}
    for name, p in providers.items():
        if p.type is ProviderType.VLLM:
            out[name] = name in running and name not in asleep
        else:
            out[name] = p.status is ProviderStatus.ACTIVE
    return out
