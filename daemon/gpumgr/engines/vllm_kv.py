"""Planned against actual KV cache of a started vLLM engine (pure).

Under vLLM 0.33 the engine sizes its KV cache once, before it serves, from the planned slice;
it refuses to start when the slice is not free. Under 0.34 (extensible KV cache) the slice is a
cap: the engine starts anyway and commits what the memory after warm-up allows, possibly less
than planned, and nothing but its log says so. gpumgr reads that figure once the engine is up
and compares it with the plan's promise: ``max_model_len`` × the whole requests the plan said
fit at once. Less than that is ``degraded`` (DESIGN.md §5): the engine serves, but not what the
router was told it would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from gpumgr.engines.vllm_log import parse_memory_report

DEFAULT_BLOCK_SIZE = 16


def minimum_tokens(max_model_len: int, max_concurrency: float) -> int:
    """The KV tokens the plan promised: whole requests at ``max_model_len`` (at least one)."""
    return max(1, math.floor(max_concurrency + 1e-9)) * max_model_len


@dataclass(frozen=True)
class KvReading:
    """What the plan said and what the engine's log says it got (None: not in the log)."""

    planned_tokens: int | None
    minimum_tokens: int | None
    actual_tokens: int | None

    @property
    def error(self) -> float | None:
        """(actual − planned) / planned: the share of the planned KV cache missing (negative)
        or gained."""
        if not self.planned_tokens or self.actual_tokens is None:
            return None
        return (self.actual_tokens - self.planned_tokens) / self.planned_tokens

    @property
    def shortfall(self) -> str | None:
        """Why the engine is ``degraded``, or None when it holds what the plan promised."""
        if self.actual_tokens is None or self.minimum_tokens is None:
            return None
        if self.actual_tokens >= self.minimum_tokens:
            return None
        return (
            f"KV cache {self.actual_tokens:,} tokens < the plan's minimum "
            f"{self.minimum_tokens:,} (planned {self.planned_tokens or 0:,}): the engine got "
            "less memory than planned after warm-up (vLLM >= 0.34 extensible KV cache); "
            "fewer requests fit at once"
        )


def read_kv(
    lines: Iterable[str], planned_tokens: int | None, minimum: int | None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> KvReading:
    """The reading of one start's log lines (``block_size``: the engine's ``--block-size``)."""
    report = parse_memory_report(lines)
    return KvReading(planned_tokens, minimum, report.actual_kv_tokens(block_size))
