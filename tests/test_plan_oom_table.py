"""The one out-of-memory table: each kind's direction, never the same slice twice, bounded."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gpumgr.actions.start import PrepareHint
from gpumgr.engines.vllm_log import OomKind
from gpumgr.plan.oom import OOM_TABLE, Move, allows, next_move, rule_for
from gpumgr.supervisor.restart import CrashHistory, RestartAction, RestartPolicy, decide

FRACTIONS = st.integers(1, 100).map(lambda h: h / 100)
KINDS = st.sampled_from([*OomKind, None])


def test_every_kind_vllm_reports_has_a_row() -> None:
    assert set(OOM_TABLE) == {k.value for k in OomKind}
    assert rule_for(OomKind.NO_KV_CACHE).move is Move.LARGER
    assert rule_for(OomKind.KV_TOO_SMALL).move is Move.LARGER
    assert rule_for(OomKind.FREE_MEMORY_AT_START).move is Move.SMALLER
    assert rule_for(OomKind.CUDA_OOM).move is Move.SMALLER
    assert rule_for(None).move is Move.SMALLER


@settings(max_examples=300, deadline=None)
@given(KINDS, FRACTIONS, FRACTIONS)
def test_the_next_slice_moves_the_way_the_kind_says_and_is_never_the_same(
    kind: OomKind | None, failed: float, nxt: float
) -> None:
    ok = allows(kind, failed, nxt)
    assert not (ok and nxt == failed)
    if kind in (OomKind.NO_KV_CACHE, OomKind.KV_TOO_SMALL):
        assert not (ok and nxt < failed)  # no room for KV: never smaller
    else:
        assert not (ok and nxt > failed)  # a free-memory refusal or failed allocation: never larger
    assert PrepareHint(failed, kind).refuses(nxt) is not ok  # the planner's hint is the table


@settings(max_examples=200, deadline=None)
@given(KINDS, FRACTIONS, st.data())
def test_a_run_of_out_of_memory_failures_ends_within_a_hundred_attempts(
    kind: OomKind | None, first: float, data: st.DataObject
) -> None:
    failed, attempts = first, 0
    while next_move(kind, failed) is not Move.GIVE_UP:
        allowed = [h / 100 for h in range(1, 101) if allows(kind, failed, h / 100)]
        if not allowed:
            break
        failed = data.draw(st.sampled_from(allowed))
        attempts += 1
        assert attempts < 100


def test_the_restart_policy_gives_up_when_the_table_leaves_no_slice() -> None:
    policy = RestartPolicy()
    larger = decide(policy, CrashHistory(), 0.0, oom=True, oom_kind="kv_too_small",
                    failed_fraction=1.0)
    assert larger.action is RestartAction.FAIL and "no larger slice exists" in larger.reason
    smaller = decide(policy, CrashHistory(), 0.0, oom=True, oom_kind="cuda_oom",
                     failed_fraction=0.01)
    assert smaller.action is RestartAction.FAIL
    replan = decide(policy, CrashHistory(), 0.0, oom=True, oom_kind="no_kv_cache",
                    failed_fraction=0.5)
    assert replan.action is RestartAction.REPLAN and replan.delay_s == 0
    assert decide(policy, CrashHistory(), 0.0, oom=True).action is RestartAction.REPLAN
