"""What one health probe found, whatever the backend type.

Every probe (``gpumgr.engines.vllm_probe``, ``ollama``, ``ollama_cloud``, ``openai_compat``)
returns a ``ProbeResult`` so that the state machine and the status document read one shape.
The probe never decides a backend *state*: it reports an outcome and facts; hysteresis and
state belong to ``gpumgr.health.machine``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


class ProbeOutcome(StrEnum):
    """Why a probe succeeded or failed; the machine maps these to states."""

    OK = "ok"
    UNREACHABLE = "unreachable"
    """Connection refused/reset, DNS failure: nothing answers (a dead or not yet bound server)."""
    TIMEOUT = "timeout"
    """Connected but no answer within the probe's timeout (a hung server)."""
    UNHEALTHY = "unhealthy"
    """It answered, with an error status or an unreadable body."""
    WRONG_MODEL = "wrong_model"
    """It answers, but serves another model than the one configured on that port."""
    RATE_LIMITED = "rate_limited"
    AUTH_FAILED = "auth_failed"
    ASLEEP = "asleep"
    """A vLLM engine in sleep mode says ``/is_sleeping``: true (weights off the card, nothing
    served), whoever put it there: ``/sleep`` needs no API key."""

    @property
    def is_failure(self) -> bool:
        """Counts towards ``retry_attempts`` (rate limits and auth failures do not: they are states)."""
        return self in _FAILURES


_FAILURES = frozenset(
    {ProbeOutcome.UNREACHABLE, ProbeOutcome.TIMEOUT, ProbeOutcome.UNHEALTHY, ProbeOutcome.WRONG_MODEL}
)


@dataclass(frozen=True)
class ModelAvailability:
    """Whether one configured model of the backend can be used, and if not, why."""

    name: str
    available: bool
    reason: str = ""


@dataclass(frozen=True)
class LoadedModel:
    """A model Ollama holds in memory (``/api/ps``). ``spilled``: part of it lives on the CPU."""

    name: str
    size_bytes: int
    size_vram_bytes: int
    expires_at: str | None = None
    context_length: int | None = None

    @property
    def spilled(self) -> bool:
        return self.size_vram_bytes < self.size_bytes


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome and facts. ``detail`` is for people and never holds a secret."""

    outcome: ProbeOutcome
    latency_ms: float
    detail: str = ""
    models: tuple[ModelAvailability, ...] = ()
    version: str | None = None
    # vLLM /metrics (None when the endpoint could not be read)
    running_requests: int | None = None
    waiting_requests: int | None = None
    kv_cache_usage: float | None = None
    busy: bool | None = None
    # Ollama /api/ps
    loaded: tuple[LoadedModel, ...] = ()
    # Ollama Cloud: how long the caller should wait before the next probe
    retry_after_s: float | None = None
    served: tuple[str, ...] = field(default=())
    """Model names the server itself reported (vLLM ``/v1/models``, Ollama ``/api/tags``)."""

    @property
    def ok(self) -> bool:
        return self.outcome is ProbeOutcome.OK

    @property
    def size_vram_bytes(self) -> int:
        """VRAM held by the backend's loaded models (Ollama): what the planner must leave it."""
        return sum(m.size_vram_bytes for m in self.loaded)


class Stopwatch:
    """Milliseconds since construction, from the monotonic clock."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def ms(self) -> float:
        return round((time.perf_counter() - self._t0) * 1000.0, 3)


def short(text: str, limit: int = 200) -> str:
    """One line, bounded: server bodies go into ``detail`` and must not flood the document."""
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"
