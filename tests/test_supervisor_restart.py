"""The restart policy is pure: backoff growth, the cap, the crash-loop window and OOM handling."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpumgr.config.settings import RestartSettings
from gpumgr.supervisor.restart import CrashHistory, RestartAction, RestartPolicy, decide


def test_backoff_doubles_from_base_and_stops_at_cap() -> None:
    policy = RestartPolicy(backoff_base_s=0.5, backoff_cap_s=3.0, max_crashes=10, window_s=60)
    assert [policy.backoff_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_crashes_are_retried_with_growing_delay_until_the_limit_then_fail() -> None:
    policy = RestartPolicy(backoff_base_s=1.0, backoff_cap_s=60.0, max_crashes=3, window_s=300)
    history = CrashHistory()
    delays = []
    for now in (10.0, 20.0, 30.0):
        d = decide(policy, history, now, oom=False)
        assert d.action is RestartAction.RETRY
        delays.append(d.delay_s)
        history = d.history
    assert delays == [1.0, 2.0, 4.0]
    final = decide(policy, history, 40.0, oom=False)
    assert final.action is RestartAction.FAIL
    assert "4 crashes within 300s" in final.reason


def test_crashes_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(backoff_base_s=1.0, backoff_cap_s=60.0, max_crashes=2, window_s=100)
    history = CrashHistory((0.0, 10.0))
    d = decide(policy, history, 500.0, oom=False)
    assert d.action is RestartAction.RETRY
    assert d.attempt == 1 and d.delay_s == 1.0
    assert d.history.crash_times_s == (500.0,)


def test_out_of_memory_is_never_retried_with_the_same_slice() -> None:
    d = decide(RestartPolicy(), CrashHistory(), 5.0, oom=True)
    assert d.action is RestartAction.REPLAN
    assert d.delay_s == 0.0


def test_an_oom_loop_still_ends_in_failed() -> None:
    policy = RestartPolicy(max_crashes=1)
    d = decide(policy, CrashHistory((1.0,)), 2.0, oom=True)
    assert d.action is RestartAction.FAIL


def test_policy_is_built_from_settings() -> None:
    s = RestartSettings(backoff_base_s=2, backoff_cap_s=8, max_crashes=4, window_s=30)
    assert RestartPolicy.from_settings(s) == RestartPolicy(2.0, 8.0, 4, 30.0)


@given(
    base=st.floats(0.01, 10),
    cap=st.floats(0.01, 100),
    attempt=st.integers(1, 10_000),
)
def test_backoff_is_positive_and_never_above_the_cap(base: float, cap: float, attempt: int) -> None:
    delay = RestartPolicy(backoff_base_s=base, backoff_cap_s=cap).backoff_s(attempt)
    assert 0 < delay <= cap
