"""Which gpumgr backend a LiteLLM deployment sends to, and what the router should do with it.

A deployment is LiteLLM's dict (``model_name``, ``litellm_params``, ``model_info``). It maps to a
backend by ``model_info.gpumgr_backend`` when present, else by its ``api_base`` and model name:
two vLLM providers that are swap partners share one address, and only the one whose models
include the deployment's model is the one it talks to. Addresses are compared normalised
(``normalise_address``): every loopback spelling is one host, default ports are explicit, and a
trailing ``/v1`` or ``/api`` is dropped, so ``http://localhost:8001/v1`` and the status
document's ``http://127.0.0.1:8001`` are the same server.

Pure: the index is rebuilt by the caller when a status changes; a pick only looks things up.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from gpumgr.integrations.litellm.status_view import BackendView, HostStatus

LOOPBACK = "loopback"
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "ip6-localhost"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_API_SUFFIXES = ("/v1", "/api")

Address = tuple[str, str, int | None, str]
"""(scheme, host, port, path) after normalisation."""


def _host(hostname: str | None) -> str:
    host = (hostname or "").lower().strip("[]")
    if host in _LOOPBACK_NAMES or host.startswith("127."):
        return LOOPBACK
    return host


@lru_cache(maxsize=4096)
def normalise_address(url: str, loopback_is: str = LOOPBACK) -> Address | None:
    """``url`` as a comparable address; ``loopback_is`` replaces a loopback host (a backend of a
    remote daemon that says ``127.0.0.1`` is on that daemon's host). None when not a URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = _host(parts.hostname)
    if host == LOOPBACK:
        host = loopback_is
    path = parts.path.rstrip("/")
    for suffix in _API_SUFFIXES:
        if path.endswith(suffix):
            path = path[: -len(suffix)].rstrip("/")
            break
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme], path


def host_of(status_url: str) -> str:
    """The host a daemon's loopback backends are reachable at, from its status URL."""
    try:
        return _host(urlsplit(status_url).hostname)
    except ValueError:
        return LOOPBACK


def model_names(litellm_model: str) -> tuple[str, ...]:
    """The names a deployment's ``litellm_params.model`` may be served under: as written, and
    without LiteLLM's provider prefix (``hosted_vllm/``, ``ollama_chat/`` …)."""
    head, sep, rest = litellm_model.partition("/")
    return (litellm_model, rest) if sep and rest else (litellm_model,)


class Verdict(enum.IntEnum):
    """What the status says about one deployment."""

    KEEP = 0
    """Not a gpumgr backend, or nothing current is known about it (stale, not yet informed,
    ``unknown``): the router decides as it would without gpumgr."""
    OK = 1
    DEGRADED = 2
    """Available but ``busy``, or in state ``degraded`` (serving with less KV cache than
    planned): used only when nothing better remains (it still answers)."""
    OUT = 3
    """Not available (down, loading, swapped out, not pulled, rate-limited …), or ``suspect``: a
    probe of it just failed, so a request sent to it is likely to hang until the router's
    ``request_timeout``. Dropped even when it is the last of its group, so the fallbacks take
    over within one probe rather than once ``retry_attempts`` probes have called it ``down``."""


@dataclass(frozen=True, slots=True)
class Located:
    """A backend of one daemon, with that daemon's identity (its index among the status URLs)."""

    host: int
    backend: BackendView
    address: Address | None


class StatusIndex:
    """Every known backend of every daemon, by name and by address (built once per change)."""

    def __init__(self, hosts: Sequence[tuple[str, HostStatus | None]]) -> None:
        """``hosts``: (status URL, its latest status or None) in configuration order."""
        self.by_name: dict[str, list[Located]] = {}
        self.by_address: dict[Address, list[Located]] = {}
        self.informed: list[bool] = []
        for i, (url, status) in enumerate(hosts):
            self.informed.append(status.informed if status is not None else False)
            if status is None:
                continue
            loopback_is = host_of(url)
            for b in status.backends.values():
                address = normalise_address(b.base_url, loopback_is) if b.base_url else None
                located = Located(i, b, address)
                self.by_name.setdefault(b.name, []).append(located)
                if address is not None:
                    self.by_address.setdefault(address, []).append(located)

    def locate(self, deployment: Any) -> tuple[Located | None, str | None]:
        """The backend a deployment sends to (None when not gpumgr's) and the model name it
        asks that backend for (None when mapped by key alone)."""
        if not isinstance(deployment, Mapping):
            return None, None
        params = deployment.get("litellm_params")
        info = deployment.get("model_info")
        params = params if isinstance(params, Mapping) else {}
        raw_model = params.get("model")
        names = model_names(raw_model) if isinstance(raw_model, str) else ()
        api_base = params.get("api_base")
        address = normalise_address(api_base) if isinstance(api_base, str) else None

        key = info.get("gpumgr_backend") if isinstance(info, Mapping) else None
        if isinstance(key, str) and key:
            found = self.by_name.get(key)
            if not found:
                return None, None
            if len(found) > 1 and address is not None:
                # The same backend name on several hosts: the one at the deployment's address.
                found = [c for c in found if c.address == address] or found
            model = next((n for n in names if n in found[0].backend.models), None)
            return found[0], model

        if address is None:
            return None, None
        candidates = self.by_address.get(address)
        if not candidates:
            return None, None
        for c in candidates:
            for n in names:
                if n in c.backend.models or n in c.backend.unavailable_models:
                    return c, n
        if len(candidates) == 1:
            return candidates[0], None  # one server at that address: it is that one
        return None, None  # swap partners, neither lists the model: not ours to judge


def verdict(
    located: Located | None, model: str | None, fresh: Callable[[int], bool], informed: Sequence[bool]
) -> Verdict:
    """The router's view of one located deployment."""
    if located is None or not fresh(located.host) or not informed[located.host]:
        return Verdict.KEEP
    b = located.backend
    if not b.known:
        return Verdict.KEEP
    if model is not None and model in b.unavailable_models:
        return Verdict.OUT
    if b.state == "degraded":
        # serving with less KV cache than planned (vLLM >= 0.34): like a busy backend, used
        # only when nothing better remains, since it does answer (fewer requests at once)
        return Verdict.DEGRADED
    if not b.available:
        return Verdict.OUT
    if b.suspect:
        return Verdict.OUT
    if b.busy:
        return Verdict.DEGRADED
    return Verdict.OK


def choose(deployments: list[Any], verdicts: Sequence[Verdict]) -> list[Any]:
    """Drop the ``OUT`` deployments, and the ``DEGRADED`` ones while another remains.

    Every deployment out gives ``[]`` (the router's fallbacks take over). Nothing dropped returns
    the very list it was given.
    """
    if not verdicts or all(v is Verdict.OK or v is Verdict.KEEP for v in verdicts):
        return deployments
    good = [d for d, v in zip(deployments, verdicts) if v is Verdict.OK or v is Verdict.KEEP]
    if good:
        return good
    return [d for d, v in zip(deployments, verdicts) if v is Verdict.DEGRADED]
