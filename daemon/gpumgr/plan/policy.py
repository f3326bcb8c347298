"""The lifecycle policies' arithmetic: idle timers and the demand policy (pure; no I/O, no clock).

Every decision here is a value computed from numbers handed in (now, counters, the policy's
settings); ``gpumgr.actions.policy`` reads the engines and the router's reports, calls these,
and turns a decision into one command to the reconciler. Kept apart so that the rules the
owner relies on (a pin is never evicted, hysteresis holds under a flapping trace, the hourly cap
holds) are tested with hypothesis over many traces, not a handful of timed runs.

The demand policy, for one place (a port or a card) held by a ``resident`` provider while the
router keeps asking for a ``wanted`` one it cannot reach:

1. the wanted model must have been asked for at least ``min_requests`` times in the window;
2. a place nobody holds is simply filled (a start or a wake: no swap, nothing evicted);
3. a pinned resident, or one under ``policy: manual``, is never swapped out;
4. the resident stays at least ``min_residency_s`` after it came in;
5. hysteresis: over the last ``window_s`` the wanted model's share of the requests (missed for
   it, against finished by the resident) must exceed the resident's share by more than
   ``margin``; a trace flapping between the two never gets there;
6. at most ``max_swaps_per_hour`` policy swaps per place in any 60 minutes;
7. never while the resident has requests in flight (the drain would have to cut a long one).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

HOUR_S = 3600.0


@dataclass(frozen=True)
class DemandParams:
    """``policies.demand`` of gpumgr.yaml."""

    min_residency_s: float = 300.0
    window_s: float = 120.0
    margin: float = 0.2
    min_requests: int = 3
    max_swaps_per_hour: int = 6


# -- counting -----------------------------------------------------------------------------------
@dataclass
class Window:
    """Counts with their times, summed over the last ``window_s`` (older ones are dropped)."""

    window_s: float
    _items: deque[tuple[float, int]] = field(default_factory=deque)
    _total: int = 0

    def add(self, now: float, count: int) -> None:
        if count > 0:
            self._items.append((now, count))
            self._total += count
        self.trim(now)

    def trim(self, now: float) -> None:
        while self._items and self._items[0][0] <= now - self.window_s:
            self._total -= self._items.popleft()[1]

    def total(self, now: float) -> int:
        self.trim(now)
        return self._total


@dataclass
class Activity:
    """One engine's request activity, from its own counters (``vllm:request_success_total``
    and the running + waiting gauges): when it was last seen doing or finishing anything."""

    since: float
    """When the engine (this pid) was first seen, or last seen active."""
    finished: int | None = None
    pid: int | None = None

    def observe(self, now: float, pid: int | None, finished: int | None, in_flight: int) -> int:
        """Fold one reading in; the requests finished since the last one (a counter that went
        back, or a new pid, is a restarted engine: its count starts again)."""
        if pid != self.pid:
            self.pid, self.finished, self.since = pid, finished, now
            return finished or 0
        delta = 0
        if finished is not None:
            delta = finished - self.finished if (
                self.finished is not None and finished >= self.finished) else finished
            self.finished = finished
        if delta > 0 or in_flight > 0:
            self.since = now
        return delta

    def idle_for(self, now: float) -> float:
        return max(0.0, now - self.since)


def idle_action_in_s(activity: Activity, now: float, after_s: float) -> float:
    """Seconds until the idle action is due (0: due now)."""
    return max(0.0, after_s - activity.idle_for(now))


# -- the demand decision -------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """What holds the wanted model's place now."""

    resident: str | None
    """The awake provider in the way (same port, or same card when the wanted one does not fit
    beside it); None when the place is free."""
    since: float = 0.0
    """When the resident came in (or was first seen by this daemon)."""
    pinned: bool = False
    demand: bool = True
    """The resident is under ``policy: demand`` (a ``manual`` one is never swapped out)."""
    in_flight: int = 0
    served: int = 0
    """Requests the resident finished in the window."""


Action = Literal["swap", "fill", "none"]


@dataclass(frozen=True)
class Decision:
    at: float
    action: Action
    wanted: str | None
    resident: str | None
    reason: str
    next_swap_at: float | None = None
    """The earliest time the policy may swap this place again (None: it may now)."""

    @property
    def made(self) -> bool:
        return self.action != "none"


def swaps_in_hour(swaps: Iterable[float], now: float) -> list[float]:
    return [t for t in swaps if now - HOUR_S < t <= now]


def next_swap_at(place: Place, swaps: Iterable[float], now: float, p: DemandParams) -> float | None:
    """When the residency and the hourly cap both allow a swap (None: now)."""
    at = place.since + p.min_residency_s if place.resident is not None else now
    recent = sorted(swaps_in_hour(swaps, now))
    if p.max_swaps_per_hour == 0:
        return None if place.resident is None else float("inf")
    if len(recent) >= p.max_swaps_per_hour:
        at = max(at, recent[len(recent) - p.max_swaps_per_hour] + HOUR_S)
    return at if at > now else None


def decide(now: float, missed: Mapping[str, int], place: Place, swaps: Iterable[float],
           p: DemandParams) -> Decision:
    """Whether to bring in the most-missed provider of ``missed`` (requests the router could not
    send to it over the window) in place of ``place.resident`` (see the module's rules)."""
    wanted = max(sorted(missed), key=lambda n: missed[n], default=None)
    want = missed.get(wanted, 0) if wanted is not None else 0
    swaps = list(swaps)
    nxt = next_swap_at(place, swaps, now, p)

    def no(reason: str) -> Decision:
        return Decision(now, "none", wanted, place.resident, reason, nxt)

    if wanted is None or want < p.min_requests:
        return no(f"{want} request(s) missed in the last {p.window_s:g} s; "
                  f"{p.min_requests} needed")
    if place.resident is None:
        return Decision(now, "fill", wanted, None,
                        f"{want} request(s) for {wanted} in the last {p.window_s:g} s and its "
                        "place is free", None)
    r = place.resident
    if place.pinned:
        return Decision(now, "none", wanted, r, f"{r} is pinned: only an operator swaps it out",
                        None)
    if not place.demand:
        return Decision(now, "none", wanted, r, f"{r} is under policy: manual", None)
    resident_for = now - place.since
    if resident_for < p.min_residency_s:
        return no(f"{r} resident for {resident_for:.0f} s of the minimum {p.min_residency_s:g} s")
    total = want + place.served
    share_w, share_r = want / total, place.served / total
    if (want - place.served) / total <= p.margin:  # = share_w - share_r, without rounding
        return no(f"{wanted} {want} vs {r} {place.served} request(s) in {p.window_s:g} s: "
                  f"share {share_w:.0%} vs {share_r:.0%}, needs a lead over {p.margin:.0%}")
    recent = swaps_in_hour(swaps, now)
    if len(recent) >= p.max_swaps_per_hour:
        return no(f"{len(recent)} swap(s) in the last hour: the cap is {p.max_swaps_per_hour}")
    if place.in_flight > 0:
        return no(f"{place.in_flight} request(s) in flight on {r}")
    return Decision(now, "swap", wanted, r,
                    f"{wanted} {want} vs {r} {place.served} request(s) in {p.window_s:g} s: "
                    f"share {share_w:.0%} vs {share_r:.0%} (lead over {p.margin:.0%})", None)
