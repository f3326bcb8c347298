"""The backend state machine: hysteresis, supervisor events, and loud refusal of impossible moves."""

from __future__ import annotations

import pytest

from gpumgr.backend_state import BackendState as S
from gpumgr.health import machine
from gpumgr.health.machine import IllegalTransition, Transition, Verdict


def up(at: float = 0.0) -> machine.BackendHealth:
    return machine.initial("qwen-7b", S.UP, at, "health 200")


def test_up_backend_goes_down_only_after_retry_attempts_consecutive_failures() -> None:
    h = up()
    for i in range(1, 3):
        step = machine.on_probe(h, Verdict.FAILURE, "vllm: no answer (timeout)", float(i), 3)
        assert step.transition is None
        h = step.health
        assert h.state is S.UP and h.consecutive_failures == i
    step = machine.on_probe(h, Verdict.FAILURE, "vllm: no answer (timeout)", 3.0, 3)
    assert step.transition == Transition(
        "qwen-7b", S.UP, S.DOWN, "vllm: no answer (timeout) (3 consecutive failures)", 3.0
    )
    assert step.health.state is S.DOWN and step.health.since == 3.0


def test_a_success_between_failures_resets_the_streak() -> None:
    h = up()
    h = machine.on_probe(h, Verdict.FAILURE, "x", 1.0, 3).health
    h = machine.on_probe(h, Verdict.FAILURE, "x", 2.0, 3).health
    h = machine.on_probe(h, Verdict.SUCCESS, "health 200", 3.0, 3).health
    assert h.consecutive_failures == 0
    h = machine.on_probe(h, Verdict.FAILURE, "x", 4.0, 3).health
    assert h.state is S.UP


def test_down_backend_comes_up_after_one_success() -> None:
    h = machine.initial("qwen-7b", S.DOWN, 0.0, "gone")
    step = machine.on_probe(h, Verdict.SUCCESS, "health 200", 5.0, 3)
    assert step.transition is not None and step.transition.new is S.UP
    assert step.health.since == 5.0 and step.health.consecutive_failures == 0


def test_unknown_backend_needs_the_same_failure_streak_to_be_down() -> None:
    h = machine.initial("ollama", S.UNKNOWN, 0.0)
    h = machine.on_probe(h, Verdict.FAILURE, "refused", 1.0, 2).health
    assert h.state is S.UNKNOWN
    assert machine.on_probe(h, Verdict.FAILURE, "refused", 2.0, 2).health.state is S.DOWN


def test_failures_while_starting_are_expected_and_do_not_mark_down() -> None:
    h = machine.initial("qwen-7b", S.STARTING, 0.0)
    for i in range(10):
        step = machine.on_probe(h, Verdict.FAILURE, "connection refused", float(i), 3)
        assert step.transition is None
        h = step.health
    assert h.state is S.STARTING
    assert machine.on_probe(h, Verdict.SUCCESS, "health 200", 11.0, 3).health.state is S.UP


def test_rate_limit_and_auth_failure_are_states_at_once_not_outages() -> None:
    h = machine.initial("cloud", S.UP, 0.0)
    step = machine.on_probe(h, Verdict.RATE_LIMITED, "HTTP 429", 1.0, 3)
    assert step.transition is not None and step.transition.new is S.RATE_LIMITED
    step = machine.on_probe(step.health, Verdict.AUTH_FAILED, "HTTP 401", 2.0, 3)
    assert step.transition is not None and step.transition.new is S.AUTH_FAILED
    step = machine.on_probe(step.health, Verdict.SUCCESS, "ok", 3.0, 3)
    assert step.health.state is S.UP


def test_process_exit_marks_down_or_restarting_immediately() -> None:
    step = machine.on_process_exit(up(), restarting=False, reason="killed by SIGKILL", at=7.0)
    assert step.transition == Transition("qwen-7b", S.UP, S.DOWN, "killed by SIGKILL", 7.0)
    step = machine.on_process_exit(up(), restarting=True, reason="exit 1", at=7.0)
    assert step.health.state is S.RESTARTING


def test_exit_during_a_stop_completes_the_stop() -> None:
    h = machine.on_lifecycle(up(), S.STOPPING, "swap to qwen-14b", 1.0).health
    step = machine.on_process_exit(h, restarting=False, reason="exit 0", at=2.0)
    assert step.health.state is S.STOPPED


def test_probe_results_are_ignored_in_states_that_are_not_probed() -> None:
    for state in (S.STOPPED, S.DISABLED, S.FAILED, S.DOWNLOADING):
        h = machine.initial("x", state, 0.0)
        assert machine.on_probe(h, Verdict.SUCCESS, "late answer", 1.0, 3).transition is None


def test_probe_success_does_not_undo_draining_or_sleeping() -> None:
    for state in (S.DRAINING, S.SLEEPING):
        h = machine.initial("x", state, 0.0)
        assert machine.on_probe(h, Verdict.SUCCESS, "health 200", 1.0, 3).health.state is state


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (S.STOPPED, S.DRAINING),
        (S.DOWN, S.SLEEPING),
        (S.DISABLED, S.STARTING),
        (S.UP, S.DOWNLOADING),
        (S.STARTING, S.UP),  # only a probe proves up
    ],
)
def test_impossible_lifecycle_transitions_are_refused_loudly(start: S, target: S) -> None:
    with pytest.raises(IllegalTransition):
        machine.on_lifecycle(machine.initial("x", start, 0.0), target, "bug", 1.0)


def test_exit_of_a_stopped_backend_is_refused() -> None:
    with pytest.raises(IllegalTransition):
        machine.on_process_exit(machine.initial("x", S.STOPPED, 0.0), False, "exit 0", 1.0)


def test_a_full_start_swap_cycle_yields_one_transition_per_change() -> None:
    h = machine.initial("qwen-14b", S.STOPPED, 0.0)
    seen = []
    for target in (S.DOWNLOADING, S.STARTING):
        step = machine.on_lifecycle(h, target, f"to {target}", 1.0)
        h = step.health
        seen.append(step.transition)
    again = machine.on_lifecycle(h, S.STARTING, "supervisor repeats itself", 1.5)
    assert again.transition is None  # same state: no second transition
    step = machine.on_probe(again.health, Verdict.SUCCESS, "health 200", 2.0, 3)
    seen.append(step.transition)
    assert [(t.old, t.new) for t in seen if t] == [
        (S.STOPPED, S.DOWNLOADING),
        (S.DOWNLOADING, S.STARTING),
        (S.STARTING, S.UP),
    ]


def test_a_backend_that_cannot_be_prepared_fails_straight_from_stopped() -> None:
    """Weights that cannot be fetched, no GPU, no plan: the backend never got a process."""
    step = machine.on_lifecycle(
        machine.initial("qwen-7b", S.STOPPED, 0.0), S.FAILED, "GPU unavailable: no driver", 1.0
    )
    assert step.transition == Transition("qwen-7b", S.STOPPED, S.FAILED, "GPU unavailable: no driver", 1.0)


def test_an_engine_abandoned_before_it_was_announced_is_stopped_from_stopped() -> None:
    """An operator's start timed out while the new engine's record was being written: the
    process exists but was never published ``starting``; stopping it is the truth, not a bug."""
    h = machine.initial("qwen-7b", S.STOPPED, 0.0)
    stopping = machine.on_lifecycle(h, S.STOPPING, "stopping pid 6541", 1.0, pid=6541)
    stopped = machine.on_lifecycle(stopping.health, S.STOPPED, "pid 6541 stopped", 1.1, pid=None)
    assert [(t.old, t.new) for t in (stopping.transition, stopped.transition) if t] == [
        (S.STOPPED, S.STOPPING), (S.STOPPING, S.STOPPED)]


def test_a_waking_engine_that_still_answers_asleep_stays_starting_but_a_spawned_one_does_not() -> None:
    # gpumgr's wake publishes `starting` from the /wake_up call on (the router's hold sees it);
    # the engine answers asleep until that call returns: not a sleep behind gpumgr's back
    asleep = machine.initial("x", S.SLEEPING, 0.0, "asleep (level 1)")
    waking = machine.on_lifecycle(asleep, S.STARTING, "pid 7 woken", 1.0).health
    kept = machine.on_probe(waking, Verdict.ASLEEP, "asleep", 1.5, 3).health
    assert kept.state is S.STARTING and kept.reason == "pid 7 woken"
    assert machine.on_probe(kept, Verdict.SUCCESS, "health 200", 2.0, 3).health.state is S.UP
    spawned = machine.initial("x", S.STARTING, 0.0, "spawned pid 8")
    assert machine.on_probe(spawned, Verdict.ASLEEP, "asleep", 1.0, 3).health.state is S.SLEEPING
