"""Properties of the planner over random cards, reserves, foreign processes and provider sets."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gpumgr.plan import InstanceRequest, OllamaModel, PlanRequest, VramPlan, estimate, plan_slices

MIB = 1 << 20


@st.composite
def instance(draw: st.DrawFn, i: int) -> InstanceRequest:
    pinned = draw(st.none() | st.integers(5, 95).map(lambda h: h / 100))
    e = estimate(
        weights_bytes=draw(st.integers(256, 20 * 1024)) * MIB,
        kv_bytes_per_token=draw(st.sampled_from([8, 32, 56, 128, 192, 512, 1024])) * 1024,
        max_model_len=draw(st.sampled_from([512, 1024, 2048, 4096, 8192, 16384, 32768])),
        max_num_seqs=draw(st.integers(1, 512)),
        enforce_eager=draw(st.booleans()),
    )
    return InstanceRequest(f"p{i}", e, pinned)


@st.composite
def plan_request(draw: st.DrawFn) -> PlanRequest:
    total = draw(st.sampled_from([4096, 8192, 12288, 16384, 24576, 49152, 81920])) * MIB
    foreign = draw(st.integers(0, total // 2))  # display, unknown processes
    ollama = tuple(
        OllamaModel(f"m{i}", draw(st.integers(0, 4096)) * MIB)
        for i in range(draw(st.integers(0, 2)))
    )
    held = sum(m.vram_bytes for m in ollama)
    n = draw(st.integers(1, 4))
    return PlanRequest(
        total_bytes=total,
        free_bytes=max(0, total - foreign - held),
        reserve_bytes=draw(st.integers(0, 1024)) * MIB,
        ollama_models=ollama,
        ollama_reservation_bytes=draw(st.integers(0, 4096)) * MIB,
        instances=tuple(draw(instance(i)) for i in range(n)),
    )


def _check_starts(plan: VramPlan) -> None:
    """vLLM's start check, instance by instance, with the memory earlier instances took."""
    free = plan.request.startable_free_bytes
    for inst in plan.instances:
        assert inst.free_at_start_bytes == free
        free -= inst.context_bytes
        assert math.ceil(plan.request.total_bytes * inst.fraction) <= free
        free -= inst.budget_bytes


@settings(max_examples=300, deadline=None)
@given(plan_request())
def test_feasible_plans_fit_and_infeasible_ones_explain(req: PlanRequest) -> None:
    plan = plan_slices(req)
    if plan.feasible:
        assert plan.handed_out_bytes <= req.available_bytes
        _check_starts(plan)
        for inst in plan.instances:
            assert inst.budget_bytes >= inst.min_budget_bytes
            assert inst.kv_tokens >= inst.max_model_len  # one full-length sequence fits
            assert 0 < inst.fraction <= 1
            if not inst.pinned:
                assert inst.fraction == round(inst.fraction * 100) / 100
    else:
        names = {r.provider for r in req.instances}
        assert plan.problems
        for p in plan.problems:
            assert p.provider in names
            assert p.shortfall_bytes > 0
            assert p.provider in p.message and "MiB" in p.message


@settings(max_examples=150, deadline=None)
@given(plan_request())
def test_offered_context_fix_makes_the_plan_fit(req: PlanRequest) -> None:
    """When the nearest fix is a shorter max_model_len, applying it gives a feasible plan."""
    plan = plan_slices(req)
    if plan.feasible or len(plan.problems) != 1:
        return
    p = plan.problems[0]
    if not p.fixes or not p.fixes[0].startswith("set max_model_len"):
        return
    new_len = int(p.fixes[0].split(" to ")[1].split()[0])
    fixed = tuple(
        InstanceRequest(
            r.provider,
            estimate(
                weights_bytes=r.estimate.weights_bytes,
                kv_bytes_per_token=r.estimate.kv_bytes_per_token,
                max_model_len=new_len if r.provider == p.provider else r.estimate.max_model_len,
                max_num_seqs=r.estimate.max_num_seqs,
                enforce_eager=r.estimate.enforce_eager,
            ),
            r.pinned_fraction,
        )
        for r in req.instances
    )
    again = plan_slices(
        PlanRequest(
            total_bytes=req.total_bytes, free_bytes=req.free_bytes, instances=fixed,
            reserve_bytes=req.reserve_bytes, ollama_models=req.ollama_models,
            ollama_reservation_bytes=req.ollama_reservation_bytes,
        )
    )
    assert again.feasible, again.problems
