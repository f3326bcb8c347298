"""The status document: the router's contract of DESIGN.md §5, as pydantic models.

These models ARE the contract: ``GET /v1/status``, ``gpumgr status --json`` and
``<runtime_dir>/status.json`` all carry ``StatusDocument`` serialised by
``StatusDocument.to_json_bytes``, and FastAPI publishes their schema as the OpenAPI contract. The
field names are fixed; fields may be added (readers ignore what they do not know, so an older
router keeps working against a newer daemon). Everything here is frozen: a document, once built,
is shared between readers without copying, and a change is a new document.

Derived facts are computed, never stored, so they cannot disagree with what they derive from:
``available`` from ``state`` and the ``models`` map from the backends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, computed_field, field_validator

from gpumgr.backend_state import BackendState

DOCUMENT_VERSION: Literal[1] = 1

HEARTBEAT_S = 2.0
"""The longest ``/v1/events`` stays silent: a ``: heartbeat`` comment follows this long without
an event."""
MAX_AGE_S = 5.0
"""The stated maximum age: a reader that has heard nothing from the daemon for longer (no answer
to ``GET /v1/status``, no SSE frame) should treat what it holds as stale and filter nothing."""


def utc_now() -> datetime:
    """The clock the publisher uses by default (tests pass their own)."""
    return datetime.now(UTC)


class _Contract(BaseModel):
    # extra="ignore": a reader built against version 1 still parses a document with new fields.
    model_config = ConfigDict(frozen=True, extra="ignore")


def _to_utc(value: datetime | None) -> datetime | None:
    """RFC 3339 UTC on the wire: every timestamp is normalised to UTC ("…Z")."""
    return value.astimezone(UTC) if value is not None else None


class DaemonInfo(_Contract):
    pid: int
    started_at: AwareDatetime
    simulated: bool = False

    _utc = field_validator("started_at")(_to_utc)


class GpuProcess(_Contract):
    """A process holding memory on a GPU; ``owner`` is a backend name, ``ollama`` or ``other``."""

    pid: int
    used_mib: int | None = Field(default=None, ge=0)
    """None where the driver cannot say per process (NVML in some containers, WDDM)."""
    owner: str


class GpuStatus(_Contract):
    index: int = Field(ge=0)
    uuid: str
    name: str
    memory_total_mib: int = Field(ge=0)
    memory_used_mib: int = Field(ge=0)
    memory_free_mib: int = Field(ge=0)
    processes: list[GpuProcess] = Field(default_factory=list)


class PolicyStatus(_Contract):
    """A backend's lifecycle policies and what they decided last (docs/policies.md). An
    addition to the §5 fields; a router does not act on it."""

    mode: Literal["manual", "demand"] = "manual"
    pinned: bool = False
    idle_after_s: float | None = None
    idle_action: str | None = None
    """``sleep``, ``stop`` or ``swap to NAME``."""
    window_s: float | None = None
    """The demand window: ``missed`` and ``served`` count requests over this many seconds."""
    missed: int | None = None
    """Requests the router reported it could not send here (not resident) in the window."""
    served: int | None = None
    """Requests this engine finished in the window (its own counter)."""
    margin: float | None = None
    min_residency_s: float | None = None
    swaps_last_hour: int | None = None
    max_swaps_per_hour: int | None = None
    last_decision: str | None = None
    """``swap``, ``fill`` (start or wake into a free place) or ``declined``."""
    reason: str | None = None
    decided_at: AwareDatetime | None = None
    next_swap_at: AwareDatetime | None = None
    """The earliest time the demand policy may swap this place (null: now)."""

    _utc = field_validator("decided_at", "next_swap_at")(_to_utc)


class BackendStatus(_Contract):
    """One backend of ``providers.yaml`` as the router should see it."""

    name: str
    type: str
    base_url: str | None = None
    state: BackendState = BackendState.UNKNOWN
    busy: bool = False
    managed: bool = False
    """True when gpumgr runs the process (vLLM); false for Ollama, the cloud and other servers."""
    models: list[str] = Field(default_factory=list)
    pid: int | None = None
    port: int | None = None
    gpu_memory_utilization: float | None = None
    restarts: int = Field(default=0, ge=0)
    since: AwareDatetime | None = None
    """When the backend entered ``state``."""
    last_check: AwareDatetime | None = None
    latency_ms: float | None = Field(default=None, ge=0)
    detail: str | None = None
    weights_commit: str | None = None
    """The Hugging Face commit of the weights a managed backend runs (an addition to §5)."""
    unavailable_models: dict[str, str] = Field(default_factory=dict)
    """Models of this backend that cannot be served although it is up, with the reason
    (e.g. an Ollama model that is not pulled). An addition to the §5 fields."""
    suspect: bool = False
    """A probe failed while the backend is ``up`` and the failures have not (yet) made it
    ``down``: a router prefers another deployment. An addition to the §5 fields."""
    progress: float | None = Field(default=None, ge=0, le=1)
    """How far a load (download, engine start, wake-up) has got, 0..1; null when not loading or
    not known. An addition to the §5 fields."""
    eta_s: float | None = Field(default=None, ge=0)
    """Seconds until the backend is expected ``up``; null when not loading or not known. An
    addition to the §5 fields."""
    vllm_version: str | None = None
    """The vLLM release the managed engine runs (``vllm --version``); an addition to §5."""
    kv_cache_tokens_planned: int | None = Field(default=None, ge=0)
    """The KV cache the plan gave the running engine, in tokens; an addition to §5."""
    kv_cache_tokens_actual: int | None = Field(default=None, ge=0)
    """The KV cache the engine reports it holds after start-up (vLLM >= 0.34 may hold less than
    planned: then the state is ``degraded``); an addition to §5."""

    idle_action_in_s: float | None = Field(default=None, ge=0)
    """Seconds until the provider's idle action (``idle:``) fires; null without one, or while
    it does not run awake. An addition to the §5 fields."""
    policy: PolicyStatus | None = None
    """The provider's lifecycle policies (pinned, idle, demand) and their last decision; null
    when it has none. An addition to the §5 fields."""

    _utc = field_validator("since", "last_check")(_to_utc)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def available(self) -> bool:
        """True only in ``up`` (DESIGN.md §5); derived so it can never contradict ``state``."""
        return self.state.available


class ModelStatus(_Contract):
    """One served model name and whether a request for it can be served now."""

    backend: str
    available: bool
    reason: str | None = None
    """Why it is unavailable (absent when available). An addition to the §5 fields."""


def build_models(backends: Iterable[BackendStatus]) -> dict[str, ModelStatus]:
    """The ``models`` map: served name -> the backend that serves it.

    When two backends list the same name (an active and a standby provider of one model), the
    available one wins; among equals the first in registry order does, so the map is stable.
    """
    out: dict[str, ModelStatus] = {}
    for backend in backends:
        for model in backend.models:
            reason = backend.unavailable_models.get(model)
            available = backend.available and reason is None
            if not available and reason is None:
                reason = f"{backend.name} is {backend.state.value}"
                if backend.detail:
                    reason += f": {backend.detail}"
            candidate = ModelStatus(
                backend=backend.name, available=available, reason=None if available else reason
            )
            current = out.get(model)
            if current is None or (candidate.available and not current.available):
                out[model] = candidate
    return out


class StatusDocument(_Contract):
    version: Literal[1] = DOCUMENT_VERSION
    generated_at: AwareDatetime
    seq: int = Field(default=0, ge=0)
    """Increments with every change of the document; an SSE event's ``id`` is the ``seq`` of the
    document that carries the change (an addition to §5)."""
    epoch: str = ""
    """This daemon's boot id (random, fixed for its lifetime): ``seq`` starts again at a
    restart, so a reader that sees a new ``epoch`` knows a lower ``seq`` is a new daemon, not a
    replay. SSE ids are ``epoch:seq`` (an addition to §5; "" from an older daemon)."""
    adoption_done: bool = False
    """The daemon has finished adopting the children a previous daemon left running. Until then
    a backend's state is a first guess (an addition to §5)."""
    first_probe_round_done: bool = False
    """Every probed backend has been probed at least once. Until then a router should not skip a
    backend on this document's word (an addition to §5)."""
    max_age_s: float = MAX_AGE_S
    """The stated maximum age (see ``MAX_AGE_S``)."""
    daemon: DaemonInfo
    gpus: list[GpuStatus] = Field(default_factory=list)
    gpu_error: str | None = None
    """Why the GPUs cannot be read now (no driver, NVML failing): ``gpus`` is then empty for
    that reason, not because the host has no card (an addition to §5)."""
    backends: list[BackendStatus] = Field(default_factory=list)
    models: dict[str, ModelStatus] = Field(default_factory=dict)

    _utc = field_validator("generated_at")(_to_utc)

    @classmethod
    def build(
        cls,
        *,
        generated_at: datetime,
        daemon: DaemonInfo,
        gpus: Sequence[GpuStatus],
        backends: Sequence[BackendStatus],
        seq: int = 0,
        epoch: str = "",
        adoption_done: bool = False,
        first_probe_round_done: bool = False,
        gpu_error: str | None = None,
    ) -> StatusDocument:
        """A document whose ``models`` map is derived from ``backends``."""
        return cls(
            generated_at=generated_at,
            gpu_error=gpu_error,
            seq=seq,
            epoch=epoch,
            adoption_done=adoption_done,
            first_probe_round_done=first_probe_round_done,
            daemon=daemon,
            gpus=list(gpus),
            backends=list(backends),
            models=build_models(backends),
        )

    def backend(self, name: str) -> BackendStatus | None:
        for b in self.backends:
            if b.name == name:
                return b
        return None

    def to_json_bytes(self) -> bytes:
        """The one serialisation used by the file, the HTTP API and the CLI."""
        return self.model_dump_json().encode()
