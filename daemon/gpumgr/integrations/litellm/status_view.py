"""A reader's view of gpumgr's status document: a small, tolerant parser of its JSON.

The LiteLLM callback runs inside the router's process, so it does not import the daemon's
pydantic models: it reads only the fields a router acts on (DESIGN.md §5, docs/status.md) and
ignores everything else, so a newer daemon with more fields never breaks an older router. A
document (or backend event) that lacks what a router needs raises ``MalformedStatus``; the
caller keeps its previous view.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class MalformedStatus(ValueError):
    """The bytes are not a status document (or backend event) a router can act on."""


@dataclass(frozen=True, slots=True)
class BackendView:
    """One backend as the router needs it."""

    name: str
    state: str
    available: bool
    busy: bool = False
    suspect: bool = False
    base_url: str | None = None
    models: frozenset[str] = frozenset()
    unavailable_models: frozenset[str] = frozenset()
    eta_s: float | None = None
    """Seconds until a loading backend is expected ``up`` (as of the last word about it)."""
    demand: bool = False
    """Under gpumgr's demand policy (``policy.mode: demand``): a request the router cannot send
    to it while it is not resident is worth reporting (``demand_report``)."""

    @property
    def swappable(self) -> bool:
        """Not resident now, and gpumgr may bring it in on demand."""
        return self.demand and self.state in SWAPPED_OUT_STATES

    @property
    def known(self) -> bool:
        """False in state ``unknown``: no information, which is never a reason to skip."""
        return self.state != "unknown"


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One daemon's document: its backends by name, in document order."""

    backends: Mapping[str, BackendView]
    seq: int | None = None
    informed: bool = True
    """False until the daemon says it has adopted its children and probed every backend once
    (``adoption_done`` / ``first_probe_round_done``); a document without those fields (an older
    daemon) counts as informed."""
    epoch: str = ""
    """The daemon's boot id ("" from an older daemon): ``seq`` counts within one epoch."""

    def with_backend(self, backend: BackendView, seq: int | None,
                     epoch: str | None = None) -> HostStatus:
        """This status after one backend event (of daemon ``epoch``; a new epoch starts ``seq``
        again, so its lower numbers are taken, not compared)."""
        backends = dict(self.backends)
        backends[backend.name] = backend
        if epoch is not None and epoch != self.epoch:
            return HostStatus(backends=backends, seq=seq, informed=self.informed, epoch=epoch)
        newer = seq if seq is not None and (self.seq is None or seq > self.seq) else self.seq
        return HostStatus(backends=backends, seq=newer, informed=self.informed, epoch=self.epoch)


def _loads(data: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(data, Mapping):
        return data
    try:
        return json.loads(data)
    except RecursionError:
        raise MalformedStatus("not JSON a router reads: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedStatus(f"not JSON: {exc}") from None


def _strings(value: Any) -> frozenset[str]:
    if isinstance(value, Mapping):
        return frozenset(k for k in value if isinstance(k, str))
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def parse_backend(data: bytes | str | Mapping[str, Any]) -> BackendView:
    """One backend object (an element of ``backends`` or the data of an SSE ``backend`` event)."""
    obj = _loads(data)
    if not isinstance(obj, Mapping):
        raise MalformedStatus("a backend must be a JSON object")
    name = obj.get("name")
    state = obj.get("state", "unknown")
    if not isinstance(name, str) or not name:
        raise MalformedStatus("a backend needs a 'name' string")
    if not isinstance(state, str):
        raise MalformedStatus(f"backend {name}: 'state' must be a string")
    available = obj.get("available")
    if not isinstance(available, bool):
        available = state == "up"  # the contract's definition, when a writer omits the field
    base_url = obj.get("base_url")
    eta = obj.get("eta_s")
    policy = obj.get("policy")
    return BackendView(
        eta_s=float(eta) if isinstance(eta, (int, float)) and not isinstance(eta, bool) else None,
        demand=isinstance(policy, Mapping) and policy.get("mode") == "demand",
        name=name,
        state=state,
        available=available,
        busy=obj.get("busy") is True,
        suspect=obj.get("suspect") is True,
        base_url=base_url if isinstance(base_url, str) and base_url else None,
        models=_strings(obj.get("models")),
        unavailable_models=_strings(obj.get("unavailable_models")),
    )


def parse_document(data: bytes | str | Mapping[str, Any]) -> HostStatus:
    """A whole ``/v1/status`` document."""
    obj = _loads(data)
    if not isinstance(obj, Mapping):
        raise MalformedStatus("the status document must be a JSON object")
    backends = obj.get("backends")
    if not isinstance(backends, list):
        raise MalformedStatus("the status document needs a 'backends' list")
    views: dict[str, BackendView] = {}
    for item in backends:
        view = parse_backend(item)
        views[view.name] = view
    seq = obj.get("seq")
    informed = all(obj.get(flag, True) is not False for flag in INFORMED_FLAGS)
    epoch = obj.get("epoch")
    return HostStatus(
        epoch=epoch if isinstance(epoch, str) and len(epoch) <= 64 else "",
        backends=views,
        seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        informed=informed,
    )


SWAPPED_OUT_STATES = frozenset({"stopped", "sleeping"})
"""States of a backend that is not resident (its place is free or taken by a swap partner)."""

INFORMED_FLAGS = ("adoption_done", "first_probe_round_done")
"""Document fields that say the daemon's states are facts rather than first guesses."""
