"""Desired state: which managed providers should run, each with its launch identity.

The registry's ``status: active`` says what the owner wants at boot; a swap (or ``gpumgr
start``/``stop``) changes what should run without rewriting the owner's file. Both are folded into
``<state_dir>/desired.json`` (atomic, versioned, read tolerantly), so a daemon that restarts after
a swap adopts the swapped-in engine instead of stopping it as unwanted.

The *launch identity* of a provider is every field that reaches the vLLM command line or
environment (repository, revision, served names, port, limits, quantization, flags, extra args,
GPU, sleep mode, the configured vLLM command), not its descriptive keys. Two identities that are
equal mean the running engine is the one the configuration asks for; a reload restarts exactly
the engines whose identity changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from gpumgr.config import Config
from gpumgr.config.registry import Provider, ProviderStatus
from gpumgr.config.settings import VllmSettings
from gpumgr.engines.vllm import sleep_mode
from gpumgr.state_numbers import all_finite
from gpumgr.supervisor.system import REAL, System

log = structlog.get_logger(__name__)

DESIRED_FILE = "desired.json"
DESIRED_VERSION = 1

_NOT_LAUNCH = frozenset({"name", "status", "health_endpoint", "requires_api_key",
                         "pinned", "idle", "policy"})
"""Declared provider fields that never reach the engine (how gpumgr probes it, whether to run,
the lifecycle policies: editing them restarts nothing)."""

Identity = dict[str, Any]


def launch_identity(provider: Provider, vllm: VllmSettings | None = None) -> Identity:
    """The provider's launch-relevant fields as plain JSON data (stable across loads).

    Declared fields only: the registry's descriptive keys (``description``, ``features``,
    ``metadata``…) are kept by the config models as extras and are not part of it, so editing
    them restarts nothing."""
    fields = [f for f in type(provider).model_fields if f not in _NOT_LAUNCH]
    identity: Identity = provider.model_dump(mode="json", include=set(fields))
    identity["models"] = [
        m.model_dump(mode="json", include=set(type(m).model_fields)) for m in provider.models
    ]
    vllm = vllm or VllmSettings()
    identity["vllm_command"] = vllm.command
    identity["sleep_mode"] = sleep_mode(provider, vllm)
    return identity


def registry_active(providers: Iterable[Provider]) -> frozenset[str]:
    """The managed providers the owner's file marks ``active``."""
    return frozenset(p.name for p in providers if p.is_vllm and p.status is ProviderStatus.ACTIVE)


def managed_providers(config: Config) -> dict[str, Provider]:
    """Providers gpumgr may run: vLLM, ``active`` or ``standby``, in the registry's order."""
    return {n: p for n, p in config.providers.items() if p.is_vllm and p.runs_here}


@dataclass(frozen=True)
class Intent:
    """An operation under way, written down before it acts: what it is, and the state to go
    back to. A daemon that dies mid-operation finds it at boot and converges to the target
    (the desired state it was written with) or back to ``previous``, never to nothing."""

    operation: str
    since: float
    previous: DesiredState

    def to_data(self) -> dict[str, Any]:
        return {"operation": self.operation, "since": self.since,
                "previous": self.previous.backends_data()}


@dataclass(frozen=True)
class DesiredState:
    """What should run: backend → the launch identity it runs (or should run) with, plus the
    registry's ``active`` set this was last reconciled against."""

    running: Mapping[str, Identity] = field(default_factory=dict)
    registry_active: frozenset[str] = frozenset()
    sleeping: frozenset[str] = frozenset()
    """Of ``running``, the engines kept asleep (vLLM sleep mode): adopted as they are after a
    daemon restart, never started afresh."""
    intent: Intent | None = None
    """The operation under way (None between operations)."""

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.running)

    def with_running(self, name: str, identity: Identity, asleep: bool = False) -> DesiredState:
        sleeping = self.sleeping | {name} if asleep else self.sleeping - {name}
        return replace(self, running={**self.running, name: identity}, sleeping=sleeping)

    def without(self, name: str) -> DesiredState:
        return replace(self, running={n: i for n, i in self.running.items() if n != name},
                       sleeping=self.sleeping - {name})

    def with_intent(self, intent: Intent | None) -> DesiredState:
        return replace(self, intent=intent)

    def same_targets(self, other: DesiredState) -> bool:
        """The same engines, identities and sleepers (intent and registry set aside)."""
        return dict(self.running) == dict(other.running) and self.sleeping == other.sleeping

    def backends_data(self) -> dict[str, Any]:
        return {n: {"identity": i, "asleep": n in self.sleeping} for n, i in self.running.items()}

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "version": DESIRED_VERSION,
            "registry_active": sorted(self.registry_active),
            "backends": self.backends_data(),
        }
        if self.intent is not None:
            data["intent"] = self.intent.to_data()
        return json.dumps(data, indent=2, sort_keys=True).encode()


def desired_for(config: Config, stored: DesiredState | None) -> DesiredState:
    """Fold the owner's file into the stored desired state.

    No stored state (first boot, unreadable file): the file's ``active`` set. Otherwise the
    stored set, with the file's *changes* applied on top: providers the owner newly marked
    ``active`` are added, ones no longer ``active`` are removed (the owner's edit wins over an
    earlier swap for the providers it touches), providers no longer runnable are dropped.
    Identities are those of the configuration; the manager compares them with what runs.
    """
    providers = managed_providers(config)
    active = registry_active(providers.values())
    vllm = config.settings.vllm
    if stored is None:
        names = set(active)
    else:
        names = (set(stored.names) - (stored.registry_active - active)) | (
            active - stored.registry_active
        )
    running = {n: launch_identity(p, vllm) for n, p in providers.items() if n in names}
    asleep = frozenset(stored.sleeping & running.keys()) if stored is not None else frozenset()
    intent = None
    if stored is not None and stored.intent is not None:
        previous = stored.intent.previous
        kept = {n: launch_identity(p, vllm) for n, p in providers.items() if n in previous.running}
        intent = replace(stored.intent, previous=DesiredState(
            kept, active, frozenset(previous.sleeping & kept.keys())))
    return DesiredState(running, active, asleep, intent)


class DesiredStore:
    """``<state_dir>/desired.json``: written atomically by the manager, read tolerantly."""

    def __init__(self, state_dir: Path, system: System = REAL) -> None:
        self.path = state_dir / DESIRED_FILE
        self._system = system

    def load(self) -> DesiredState | None:
        """The stored state; None when absent or unreadable (logged), so the registry decides."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("desired.unreadable", path=str(self.path), error=str(exc))
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("backends"), dict):
            log.warning("desired.unreadable", path=str(self.path), error="unexpected shape")
            return None
        if raw.get("version") != DESIRED_VERSION:
            log.warning("desired.version", path=str(self.path), version=raw.get("version"))
        running, sleeping = self._backends(raw["backends"])
        active = raw.get("registry_active")
        names = frozenset(a for a in active if isinstance(a, str)) if isinstance(active, list) else frozenset()
        return DesiredState(running, names, sleeping, self._intent(raw.get("intent"), names))

    def _backends(self, raw: dict[Any, Any]) -> tuple[dict[str, Identity], frozenset[str]]:
        running: dict[str, Identity] = {}
        sleeping: set[str] = set()
        for name, entry in raw.items():
            identity = entry.get("identity") if isinstance(entry, dict) else None
            if isinstance(name, str) and isinstance(identity, dict) and all_finite(identity):
                running[name] = identity
                if entry.get("asleep") is True:
                    sleeping.add(name)
            else:
                log.warning("desired.entry_ignored", path=str(self.path), backend=str(name)[:80])
        return running, frozenset(sleeping)

    def _intent(self, raw: object, active: frozenset[str]) -> Intent | None:
        if raw is None:
            return None
        since = raw.get("since") if isinstance(raw, dict) else None
        previous = raw.get("previous") if isinstance(raw, dict) else None
        if (not isinstance(raw, dict) or not isinstance(raw.get("operation"), str)
                or not isinstance(since, (int, float)) or not math.isfinite(since)
                or not isinstance(previous, dict)):
            log.warning("desired.intent_ignored", path=str(self.path))
            return None
        running, sleeping = self._backends(previous)
        return Intent(raw["operation"][:200], float(since), DesiredState(running, active, sleeping))

    def save(self, state: DesiredState) -> None:
        """Raises ``OSError`` (disk full, read-only): the caller decides what that means."""
        self._system.write_atomic(self.path, state.to_json())
