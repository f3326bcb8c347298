"""The simulated engine's chaos and timing switches, read once from the environment.

Environment variables (not flags) because the daemon starts the engine with the real vLLM
command line and must not add flags vLLM would reject; tests and ``gpumgr demo`` set these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gpumgr.vllm_tables.releases import parse_version
from gpumgr.sim.vllm_engine.memory import (
    DEFAULT_ACTIVATION_MIB,
    DEFAULT_CONTEXT_MIB,
    DEFAULT_CUDA_GRAPH_MIB,
)

DEFAULT_TOKEN_DELAY_S = 0.01
DEFAULT_VLLM_VERSION = "0.33.0"


class KnobError(ValueError):
    """A switch holds something that is not a number."""


@dataclass(frozen=True)
class SimKnobs:
    load_s: float | None = None
    """GPUMGR_SIM_LOAD_SECONDS: fixed load time; default 0.25 s per GiB of weights."""
    context_mib: int = DEFAULT_CONTEXT_MIB
    """GPUMGR_SIM_CONTEXT_MIB: the CUDA context, outside the utilization budget."""
    activation_mib: int = DEFAULT_ACTIVATION_MIB
    """GPUMGR_SIM_ACTIVATION_MIB: activation peak charged to the budget."""
    cuda_graph_mib: int = DEFAULT_CUDA_GRAPH_MIB
    """GPUMGR_SIM_CUDA_GRAPH_MIB: CUDA graphs (0 with --enforce-eager)."""
    token_delay_s: float = DEFAULT_TOKEN_DELAY_S
    """GPUMGR_SIM_TOKEN_DELAY_S: time per generated token."""
    wake_s: float | None = None
    """GPUMGR_SIM_WAKE_SECONDS: time to wake from sleep; default a tenth of the load time."""
    crash_after_s: float | None = None
    """GPUMGR_SIM_CRASH_AFTER_S: exit 1 with a traceback after this long serving."""
    hang_after_s: float | None = None
    """GPUMGR_SIM_HANG_AFTER_S: stop answering (alive, port open) after this long serving."""
    dead_after_s: float | None = None
    """GPUMGR_SIM_ENGINE_DEAD_AFTER_S: /health answers 503 (engine died, API alive)."""
    oom_at_start: bool = False
    """GPUMGR_SIM_OOM_AT_START=1: exit 1 while loading with a CUDA out-of-memory trace."""
    ignore_sigterm: bool = False
    """GPUMGR_SIM_IGNORE_SIGTERM=1: SIGTERM is ignored (by the grandchild too)."""
    grandchild: bool = False
    """GPUMGR_SIM_GRANDCHILD=1: a grandchild in the same process group holds the memory, as
    vLLM's EngineCore does, and keeps it until it is killed."""
    vllm_version: str = DEFAULT_VLLM_VERSION
    """GPUMGR_SIM_VLLM_VERSION: the release imitated (its flags table, its memory model, its
    ``--version`` answer); 0.34+ sizes the KV cache after warm-up (extensible KV cache)."""
    kv_margin_mib: int = 0
    """GPUMGR_SIM_KV_MARGIN_MIB: under 0.34, memory kept free after warm-up besides the
    activation peak (vLLM keeps a margin for allocator fragmentation)."""
    events_file: Path | None = None
    """GPUMGR_SIM_EVENTS_FILE: append JSON lines (pid, event, t) at init start/end, serving,
    exit; lets tests prove that two engines never initialised at the same time."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SimKnobs:
        def num(name: str) -> float | None:
            text = env.get(name, "").strip()
            if not text:
                return None
            try:
                value = float(text)
            except ValueError:
                raise KnobError(f"{name}={text!r} is not a number") from None
            if value < 0:
                raise KnobError(f"{name}={text!r} must not be negative")
            return value

        def mib(name: str, default: int) -> int:
            value = num(name)
            return default if value is None else int(value)

        def flag(name: str) -> bool:
            return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")

        delay = num("GPUMGR_SIM_TOKEN_DELAY_S")
        version = env.get("GPUMGR_SIM_VLLM_VERSION", "").strip() or DEFAULT_VLLM_VERSION
        if parse_version(version) is None:
            raise KnobError(f"GPUMGR_SIM_VLLM_VERSION={version!r} is not a version like 0.34.0")
        events = env.get("GPUMGR_SIM_EVENTS_FILE", "").strip()
        return cls(
            load_s=num("GPUMGR_SIM_LOAD_SECONDS"),
            context_mib=mib("GPUMGR_SIM_CONTEXT_MIB", DEFAULT_CONTEXT_MIB),
            activation_mib=mib("GPUMGR_SIM_ACTIVATION_MIB", DEFAULT_ACTIVATION_MIB),
            cuda_graph_mib=mib("GPUMGR_SIM_CUDA_GRAPH_MIB", DEFAULT_CUDA_GRAPH_MIB),
            token_delay_s=DEFAULT_TOKEN_DELAY_S if delay is None else delay,
            wake_s=num("GPUMGR_SIM_WAKE_SECONDS"),
            crash_after_s=num("GPUMGR_SIM_CRASH_AFTER_S"),
            hang_after_s=num("GPUMGR_SIM_HANG_AFTER_S"),
            dead_after_s=num("GPUMGR_SIM_ENGINE_DEAD_AFTER_S"),
            oom_at_start=flag("GPUMGR_SIM_OOM_AT_START"),
            ignore_sigterm=flag("GPUMGR_SIM_IGNORE_SIGTERM"),
            grandchild=flag("GPUMGR_SIM_GRANDCHILD"),
            vllm_version=version,
            kv_margin_mib=mib("GPUMGR_SIM_KV_MARGIN_MIB", 0),
            events_file=Path(events) if events else None,
        )
