"""The restart policy: what to do after a child exits. Pure: no clock, no I/O, no processes.

The caller passes the time (``now_s``, any monotonic clock) and the history of earlier crashes;
the policy answers with a decision. Keeping it pure lets every rule (backoff growth, the cap, the
crash-loop window, out-of-memory handling) be tested without starting a process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gpumgr.config.settings import RestartSettings
from gpumgr.plan.oom import Move, next_move, rule_for


class RestartAction(StrEnum):
    RETRY = "retry"
    """Start the same launch again after ``delay_s``."""
    REPLAN = "replan"
    """Out of memory: never retry the same slice; ask the planner for one the out-of-memory
    table (``gpumgr.plan.oom``) allows, or fail."""
    FAIL = "fail"
    """Crash loop: stop trying; the backend goes to ``failed``."""


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff ``base × 2^(n-1)`` capped at ``cap``; more than ``max_crashes``
    crashes within ``window_s`` is a crash loop."""

    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    max_crashes: int = 5
    window_s: float = 300.0

    @classmethod
    def from_settings(cls, s: RestartSettings) -> RestartPolicy:
        return cls(s.backoff_base_s, s.backoff_cap_s, s.max_crashes, s.window_s)

    def backoff_s(self, attempt: int) -> float:
        """Delay before restart ``attempt`` (1-based)."""
        exponent = max(attempt - 1, 0)
        if exponent > 60:  # 2**60 × base is past any cap; avoid float overflow
            return self.backoff_cap_s
        return float(min(self.backoff_base_s * (2**exponent), self.backoff_cap_s))


@dataclass(frozen=True)
class CrashHistory:
    """When earlier crashes happened (same clock as ``now_s``), oldest first."""

    crash_times_s: tuple[float, ...] = field(default_factory=tuple)

    def recorded(self, now_s: float, window_s: float) -> CrashHistory:
        """This history plus a crash at ``now_s``, forgetting crashes older than the window."""
        kept = tuple(t for t in self.crash_times_s if now_s - t <= window_s)
        return CrashHistory((*kept, now_s))

    def in_window(self, now_s: float, window_s: float) -> int:
        return sum(1 for t in self.crash_times_s if now_s - t <= window_s)


@dataclass(frozen=True)
class RestartDecision:
    action: RestartAction
    delay_s: float
    attempt: int
    """Crashes counted in the window, this one included."""
    history: CrashHistory
    reason: str


def decide(
    policy: RestartPolicy,
    history: CrashHistory,
    now_s: float,
    *,
    oom: bool,
    oom_kind: str | None = None,
    failed_fraction: float | None = None,
) -> RestartDecision:
    """Decide what follows an unexpected exit at ``now_s``.

    Every exit counts in the window; more than ``max_crashes`` ends in FAIL. Otherwise an
    ``oom`` exit (recognised from vLLM's messages by the engine module) is never retried blindly
    (the same fraction would fail the same way): the answer is REPLAN, at once. Anything else
    is RETRY after the backoff. With the out-of-memory ``oom_kind`` and the ``failed_fraction``
    known, the one out-of-memory table (``gpumgr.plan.oom``) may say that no slice is left in
    the direction that kind calls for: FAIL at once.
    """
    updated = history.recorded(now_s, policy.window_s)
    attempt = len(updated.crash_times_s)
    if attempt > policy.max_crashes:
        return RestartDecision(
            RestartAction.FAIL,
            0.0,
            attempt,
            updated,
            f"{attempt} crashes within {policy.window_s:g}s (limit {policy.max_crashes})",
        )
    if oom and failed_fraction is not None and next_move(oom_kind, failed_fraction) is Move.GIVE_UP:
        way = rule_for(oom_kind).move.value
        return RestartDecision(
            RestartAction.FAIL, 0.0, attempt, updated,
            f"out of memory with --gpu-memory-utilization {failed_fraction:g}; no {way} slice exists",
        )
    if oom:
        return RestartDecision(
            RestartAction.REPLAN, 0.0, attempt, updated, "out of memory with the planned slice"
        )
    return RestartDecision(
        RestartAction.RETRY,
        policy.backoff_s(attempt),
        attempt,
        updated,
        f"crash {attempt} of at most {policy.max_crashes} within {policy.window_s:g}s",
    )
