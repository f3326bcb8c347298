"""Typed events the supervisor and the start sequencer emit through a callback.

The daemon feeds them to the backend state machine and the status publisher; the supervisor
knows neither. Every event is a frozen dataclass carrying the backend name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ChildStarted:
    """A process was spawned (or adopted); it is loading, not yet serving."""

    backend: str
    pid: int
    port: int | None
    fraction: float | None
    adopted: bool = False


@dataclass(frozen=True)
class ChildReady:
    """``/health`` answered 200: the backend serves."""

    backend: str
    pid: int
    startup_s: float
    adopted: bool = False


@dataclass(frozen=True)
class ChildExited:
    """The process exited when nobody asked it to (crash, OOM, early exit at start)."""

    backend: str
    pid: int
    returncode: int | None
    oom: bool
    last_error: str


@dataclass(frozen=True)
class Restarting:
    """Another start follows in ``delay_s``; ``reason`` says what failed (the detail)."""

    backend: str
    delay_s: float
    attempt: int
    reason: str = ""


@dataclass(frozen=True)
class BackendFailed:
    """No more automatic tries; ``detail`` says why (the engine's last error, the plan)."""

    backend: str
    detail: str


@dataclass(frozen=True)
class BackendDown:
    """The backend cannot run right now and gpumgr will not act (e.g. a foreign port holder)."""

    backend: str
    detail: str


@dataclass(frozen=True)
class ChildStopping:
    backend: str
    pid: int


@dataclass(frozen=True)
class ChildStopped:
    backend: str
    pid: int
    killed: bool
    memory_released: bool


@dataclass(frozen=True)
class BackendStopped:
    """Stopped while no process ran (restarting, failed, downloading): it stays stopped."""

    backend: str
    reason: str = "stopped"


@dataclass(frozen=True)
class Downloading:
    """Its weights are being fetched; ``detail`` carries the progress."""

    backend: str
    detail: str


@dataclass(frozen=True)
class Draining:
    """The router should stop sending to it now; in-flight requests still finish."""

    backend: str
    pid: int


@dataclass(frozen=True)
class Sleeping:
    """vLLM sleep mode: weights in host RAM (level 1) or dropped (level 2), the process and its
    CUDA context live on, nothing is served. ``detail`` says what it holds where."""

    backend: str
    pid: int
    detail: str = ""


@dataclass(frozen=True)
class Woken:
    """Back from sleep: loaded again, to be checked before it counts as up."""

    backend: str
    pid: int


@dataclass(frozen=True)
class OllamaEvicted:
    """Ollama models were unloaded to make room for ``backend``'s start; they should get no
    requests (which would load them again) until that start is over."""

    backend: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class KvCacheMeasured:
    """A started vLLM engine's KV cache as its log reports it, against the plan's. ``shortfall``
    (not empty) makes the backend ``degraded`` once a probe proves it serves."""

    backend: str
    pid: int
    planned_kv: int | None
    """KV cache tokens (the field names avoid "token": the log redactor masks those)."""
    actual_kv: int | None
    shortfall: str = ""
    vllm_version: str | None = None


SupervisorEvent = (
    ChildStarted
    | ChildReady
    | ChildExited
    | Restarting
    | BackendFailed
    | BackendDown
    | ChildStopping
    | ChildStopped
    | BackendStopped
    | Downloading
    | Draining
    | Sleeping
    | Woken
    | OllamaEvicted
    | KvCacheMeasured
)
EventSink = Callable[[SupervisorEvent], None]


def discard(_event: SupervisorEvent) -> None:
    """An event sink that drops everything (tools that need no status)."""
