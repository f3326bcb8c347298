"""The demand policy's arithmetic (pure): hysteresis holds under a flapping trace, the hourly cap
and the minimum residency hold under any trace, a pin is never evicted; the counting windows and
the idle timer from an engine's own counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from gpumgr.plan.policy import (
    HOUR_S,
    Activity,
    DemandParams,
    Place,
    Window,
    decide,
    idle_action_in_s,
    next_swap_at,
)

PARAMS = DemandParams(min_residency_s=60, window_s=120, margin=0.2, min_requests=3,
                      max_swaps_per_hour=4)


@dataclass
class Replay:
    """Two models on one place, requests for either, the policy asked once a second: what the
    daemon's runner does, without processes (a swap is instant here)."""

    p: DemandParams
    resident: str = "a"
    since: float = 0.0
    pinned: bool = False
    swaps: list[float] = field(default_factory=list)
    served: Window = field(init=False)
    missed: Window = field(init=False)

    def __post_init__(self) -> None:
        self.served, self.missed = Window(self.p.window_s), Window(self.p.window_s)

    def request(self, t: float, model: str) -> None:
        (self.served if model == self.resident else self.missed).add(t, 1)

    def tick(self, t: float) -> str:
        other = "b" if self.resident == "a" else "a"
        d = decide(t, {other: self.missed.total(t)},
                   Place(self.resident, self.since, self.pinned, True, 0, self.served.total(t)),
                   self.swaps, self.p)
        if d.action == "swap":
            w, r = self.missed.total(t), self.served.total(t)
            assert (w - r) / (w + r) > self.p.margin  # the decision's own rule, every time
            self.swaps.append(t)
            self.resident, self.since = other, t
            self.served, self.missed = self.missed, Window(self.p.window_s)
        return d.action

    def run(self, trace: list[tuple[float, str]], until: float) -> None:
        i, t = 0, 0.0
        while t <= until:
            while i < len(trace) and trace[i][0] <= t:
                self.request(*trace[i])
                i += 1
            self.tick(t)
            t += 1.0


gaps = st.lists(st.floats(min_value=0.05, max_value=30.0), min_size=1, max_size=300)


@settings(max_examples=80, deadline=None)
@given(gaps, st.sampled_from(["a", "b"]))
def test_a_flapping_trace_never_swaps(gaps_s: list[float], first: str) -> None:
    # requests alternate between the two models at any pace: neither leads by the margin
    trace, t = [], 0.0
    order = [first, "b" if first == "a" else "a"]
    for i, g in enumerate(gaps_s):
        t += g
        trace.append((t, order[i % 2]))
    r = Replay(DemandParams(min_residency_s=0, window_s=120, margin=0.2, min_requests=3,
                            max_swaps_per_hour=100))
    r.run(trace, t + 1)
    assert r.swaps == []


shifts = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 60),
                            st.floats(0.1, 5.0)), min_size=1, max_size=40)


def _shifting(phases: list[tuple[str, int, float]]) -> tuple[list[tuple[float, str]], float]:
    trace, t = [], 0.0
    for model, n, gap in phases:
        for _ in range(n):
            t += gap
            trace.append((t, model))
    return trace, t


@settings(max_examples=80, deadline=None)
@given(shifts, st.integers(0, 6), st.floats(0, 600))
def test_the_hourly_cap_and_the_minimum_residency_hold_under_any_trace(
        phases: list[tuple[str, int, float]], cap: int, residency: float) -> None:
    p = DemandParams(min_residency_s=residency, window_s=60, margin=0.1, min_requests=1,
                     max_swaps_per_hour=cap)
    trace, end = _shifting(phases)
    r = Replay(p)
    r.run(trace, end + 1)
    for i, t in enumerate(r.swaps):
        assert sum(1 for u in r.swaps if t - HOUR_S < u <= t) <= cap
        if i:
            assert t - r.swaps[i - 1] >= residency


@settings(max_examples=60, deadline=None)
@given(shifts)
def test_a_pinned_resident_is_never_swapped_out(phases: list[tuple[str, int, float]]) -> None:
    trace, end = _shifting(phases)
    r = Replay(DemandParams(min_residency_s=0, window_s=60, margin=0.0, min_requests=1,
                            max_swaps_per_hour=1000), pinned=True)
    r.run(trace, end + 1)
    assert r.swaps == [] and r.resident == "a"


def test_a_clear_shift_swaps_once_after_the_residency_and_says_why() -> None:
    r = Replay(PARAMS)
    trace = [(float(t), "b") for t in range(1, 40)]
    r.run(trace, 90)
    assert r.swaps == [60.0]  # wanted from t=3, held back by the 60 s minimum residency
    d = decide(10, {"b": 9}, Place("a", 0, served=1), [], PARAMS)
    assert d.action == "none" and "resident for 10 s of the minimum 60 s" in d.reason
    assert d.next_swap_at == 60


def test_the_declined_reasons_name_the_numbers() -> None:
    place = Place("a", 0, served=4)
    assert "share 56% vs 44%, needs a lead over 20%" in decide(500, {"b": 5}, place, [], PARAMS).reason
    assert decide(500, {"b": 2}, place, [], PARAMS).reason.endswith("3 needed")
    capped = decide(500, {"b": 20}, place, [100, 200, 300, 400], PARAMS)
    assert "4 swap(s) in the last hour: the cap is 4" in capped.reason
    assert capped.next_swap_at == 100 + HOUR_S
    busy = decide(500, {"b": 20}, Place("a", 0, in_flight=2), [], PARAMS)
    assert busy.action == "none" and "2 request(s) in flight on a" in busy.reason
    manual = decide(500, {"b": 20}, Place("a", 0, demand=False), [], PARAMS)
    assert manual.action == "none" and "policy: manual" in manual.reason
    free = decide(500, {"b": 3}, Place(None), [], PARAMS)
    assert free.action == "fill" and free.next_swap_at is None


def test_next_swap_at_is_the_later_of_residency_and_cap() -> None:
    assert next_swap_at(Place("a", 100), [], 120, PARAMS) == 160
    assert next_swap_at(Place("a", 0), [10, 20, 30, 40], 120, PARAMS) == 10 + HOUR_S
    assert next_swap_at(Place("a", 0), [], 120, PARAMS) is None


def test_a_window_forgets_what_is_older_than_it() -> None:
    w = Window(10)
    w.add(0, 3)
    w.add(5, 2)
    assert w.total(9) == 5
    assert w.total(10) == 2
    assert w.total(16) == 0


def test_idle_counts_from_the_engine_counters_and_restarts_with_any_request() -> None:
    a = Activity(0.0)
    assert a.observe(0, 42, 100, 0) == 100  # first reading of this engine
    assert a.observe(5, 42, 100, 0) == 0
    assert idle_action_in_s(a, 5, 30) == 25
    assert a.observe(8, 42, 100, 1) == 0  # one in flight: active now
    assert idle_action_in_s(a, 10, 30) == 28
    assert a.observe(20, 42, 103, 0) == 3
    assert idle_action_in_s(a, 50, 30) == 0
    assert a.observe(51, 43, 0, 0) == 0  # a restarted engine starts a new period
    assert idle_action_in_s(a, 51, 30) == 30
