"""The one out-of-memory table: what the next attempt may do after each kind of failure. Pure.

vLLM fails for lack of memory in four ways (``gpumgr.engines.vllm_log.OomKind``; the table is
keyed by the kind's string value so this core module does not import the engine layer):

========================  ===================================================  ============
kind                      why                                                  next slice
========================  ===================================================  ============
free_memory_at_start      others held memory when it started                   smaller
no_kv_cache               weights + activations + graphs filled the slice        larger
kv_too_small              the KV cache cannot hold one ``max_model_len`` request  larger
cuda_oom                  an allocation failed while loading or profiling      smaller
(unknown / not given)     an out-of-memory exit the log did not classify       smaller
========================  ===================================================  ============

The same slice is never offered again (it would fail the same way): the next fraction must move
strictly in the table's direction, so a run of out-of-memory failures visits each hundredth at
most once and ends within 100 attempts even without the restart policy's crash window. When no
fraction is left in that direction (``0.01`` going down, ``1.00`` going up) the answer is to give
up: the backend goes ``failed`` with the planner's explanation.

Used by the restart policy (``gpumgr.supervisor.restart.decide``: an out-of-memory exit is
re-planned at once, never retried after a backoff) and by the planner
(``gpumgr.plan.decide``: a slice the table refuses is not planned).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

HUNDREDTHS = 100


class Move(StrEnum):
    SMALLER = "smaller"
    """Only a strictly smaller slice may be tried."""
    LARGER = "larger"
    """Only a strictly larger slice may be tried."""
    GIVE_UP = "give_up"
    """No slice is left in the direction the failure calls for: the backend fails."""


@dataclass(frozen=True)
class OomRule:
    """One row of the table."""

    kind: str
    move: Move
    why: str


OOM_TABLE: dict[str, OomRule] = {
    r.kind: r
    for r in (
        OomRule("free_memory_at_start", Move.SMALLER, "others held memory when it started"),
        OomRule("no_kv_cache", Move.LARGER, "weights, activations and graphs filled the slice"),
        OomRule("kv_too_small", Move.LARGER, "the KV cache cannot hold one full-length request"),
        OomRule("cuda_oom", Move.SMALLER, "an allocation failed while loading or profiling"),
    )
}
UNKNOWN_RULE = OomRule("unknown", Move.SMALLER, "an out-of-memory exit of unknown kind")


def rule_for(kind: str | None) -> OomRule:
    """The table's row for ``kind`` (an ``OomKind`` or its value; None: unknown → smaller)."""
    return OOM_TABLE.get(str(kind), UNKNOWN_RULE) if kind is not None else UNKNOWN_RULE


def _h(fraction: float) -> int:
    return round(fraction * HUNDREDTHS)


def next_move(kind: str | None, failed_fraction: float) -> Move:
    """What the attempt after an out-of-memory failure at ``failed_fraction`` may do: move in
    the table's direction, or give up when no hundredth is left that way."""
    move = rule_for(kind).move
    h = _h(failed_fraction)
    if (move is Move.SMALLER and h <= 1) or (move is Move.LARGER and h >= HUNDREDTHS):
        return Move.GIVE_UP
    return move


def allows(kind: str | None, failed_fraction: float | None, fraction: float) -> bool:
    """Whether ``fraction`` may be tried after an out-of-memory failure of ``kind`` at
    ``failed_fraction`` (None: no such failure, anything goes)."""
    if failed_fraction is None:
        return True
    move = next_move(kind, failed_fraction)
    if move is Move.SMALLER:
        return fraction < failed_fraction
    if move is Move.LARGER:
        return fraction > failed_fraction
    return False
