"""The slice computation: each vLLM instance's ``--gpu-memory-utilization`` on one GPU. Pure.

Rules (DESIGN.md §3):

* An instance takes ``context + ceil(fraction × total)`` from the card; instances start one at
  a time, so instance k's start check sees the free memory minus what instances < k took, and
  needs ``free - own context >= ceil(fraction × total)``. Requiring the sum of every footprint
  to stay within ``free - reserve`` satisfies every start check, whatever the order.
* Each instance first gets its minimum (weights, activations, CUDA graphs, safety margin and
  one full-length sequence of KV), rounded UP to the next 0.01 of the card; a pinned
  ``gpu_memory_utilization`` is kept as given.
* The surplus is shared as KV cache, proportional to each instance's KV need at
  ``max_model_len × max_num_seqs`` (a long-context, many-sequence model can use more), capped
  where every sequence already fits at full length (more KV buys nothing there); what a cap
  leaves is shared again among the others (water-filling). Fractions are then rounded DOWN to
  0.01 and left-over hundredths go one at a time to the instances furthest below their share.
* Start order: pinned first (the operator asked for exactly that), then the largest minimum
  first: the instance most likely to fail its start check fails before anything else has to
  be rolled back.
"""

from __future__ import annotations

from gpumgr.plan.explain import explain_pin_too_small, explain_shortfall
from gpumgr.plan.model import (
    HUNDREDTHS,
    InstanceBudget,
    InstanceRequest,
    PlanRequest,
    Shortfall,
    VramPlan,
    budget_bytes_for,
    hundredths_budget,
    max_hundredths,
    min_hundredths,
)

def start_order(instances: tuple[InstanceRequest, ...]) -> list[InstanceRequest]:
    """Pinned first, then by descending minimum budget; ties keep the registry's order."""
    return sorted(
        instances,
        key=lambda r: (r.pinned_fraction is None, -r.estimate.min_budget_bytes),
    )


def _water_fill(surplus: float, weights: list[float], caps: list[float]) -> list[float]:
    """Split ``surplus`` proportional to ``weights``, none above its cap; re-share what a cap
    leaves among the rest until nothing is left or everyone is capped."""
    extra = [0.0] * len(weights)
    open_ = {i for i, c in enumerate(caps) if c > 0}
    left = surplus
    while left > 1e-6 and open_:
        w = {i: weights[i] if weights[i] > 0 else 1.0 for i in open_}
        total_w = sum(w.values())
        capped: set[int] = set()
        given = 0.0
        for i in sorted(open_):
            share = left * w[i] / total_w
            room = caps[i] - extra[i]
            if share >= room:
                share = room
                capped.add(i)
            extra[i] += share
            given += share
        left -= given
        if not capped:
            break
        open_ -= capped
    return extra


def plan_slices(request: PlanRequest) -> VramPlan:
    """The slices for ``request`` (see the module's rules), or the explanation of a shortfall."""
    total = request.total_bytes
    order = start_order(request.instances)
    h: dict[str, int] = {}
    budgets: dict[str, int] = {}
    fractions: dict[str, float] = {}
    problems: list[Shortfall] = []

    for r in order:
        est = r.estimate
        if r.pinned_fraction is not None:
            fractions[r.provider] = r.pinned_fraction
            budgets[r.provider] = budget_bytes_for(total, r.pinned_fraction)
            if budgets[r.provider] < est.min_budget_bytes:
                problems.append(explain_pin_too_small(r, total))
        else:
            h[r.provider] = min_hundredths(total, est.min_budget_bytes)
            budgets[r.provider] = hundredths_budget(total, h[r.provider])
            fractions[r.provider] = h[r.provider] / HUNDREDTHS

    available = request.available_bytes
    need = sum(r.estimate.context_bytes + budgets[r.provider] for r in order)
    too_big = [r for r in order if r.pinned_fraction is None and h[r.provider] > HUNDREDTHS]
    if too_big or need > available:
        problems.append(explain_shortfall(request, order, budgets, need))
    if not problems:
        _share_surplus(request, order, h, budgets, fractions, available - need)

    return VramPlan(
        request=request,
        instances=tuple(_budgets(request, order, budgets, fractions)),
        problems=tuple(problems),
    )


def _share_surplus(
    request: PlanRequest,
    order: list[InstanceRequest],
    h: dict[str, int],
    budgets: dict[str, int],
    fractions: dict[str, float],
    surplus_bytes: int,
) -> None:
    """Grow the unpinned instances' hundredths by the KV rule (mutates the three dicts)."""
    total = request.total_bytes
    free_ = [r for r in order if r.pinned_fraction is None]
    if not free_ or surplus_bytes <= 0:
        return
    weights = [float(r.estimate.full_kv_bytes) for r in free_]
    caps = [
        float(max(0, min(r.estimate.useful_budget_bytes, total) - budgets[r.provider]))
        for r in free_
    ]
    extra = _water_fill(float(surplus_bytes), weights, caps)
    targets: dict[str, float] = {}
    for r, x in zip(free_, extra, strict=True):
        p = r.provider
        targets[p] = budgets[p] + x
        h[p] = max(h[p], max_hundredths(total, int(targets[p])))
    used = sum(r.estimate.context_bytes + hundredths_budget(total, h[r.provider]) for r in free_)
    used += sum(
        r.estimate.context_bytes + budgets[r.provider] for r in order if r.pinned_fraction is not None
    )
    # Hand out the hundredths that rounding down left, furthest-below-target first.
    while True:
        best: InstanceRequest | None = None
        best_gap = 0.0
        for r in free_:
            p = r.provider
            cur = hundredths_budget(total, h[p])
            if h[p] >= HUNDREDTHS or cur >= r.estimate.useful_budget_bytes:
                continue
            step = hundredths_budget(total, h[p] + 1) - cur
            if used + step > request.available_bytes:
                continue
            gap = targets[p] - cur
            if best is None or gap > best_gap:
                best, best_gap = r, gap
        if best is None:
            break
        p = best.provider
        used += hundredths_budget(total, h[p] + 1) - hundredths_budget(total, h[p])
        h[p] += 1
    for r in free_:
        budgets[r.provider] = hundredths_budget(total, h[r.provider])
        fractions[r.provider] = h[r.provider] / HUNDREDTHS


def _budgets(
    request: PlanRequest,
    order: list[InstanceRequest],
    budgets: dict[str, int],
    fractions: dict[str, float],
) -> list[InstanceBudget]:
    out: list[InstanceBudget] = []
    free_now = request.startable_free_bytes
    for k, r in enumerate(order):
        est, b = r.estimate, budgets[r.provider]
        out.append(
            InstanceBudget(
                provider=r.provider,
                start_index=k,
                fraction=fractions[r.provider],
                pinned=r.pinned_fraction is not None,
                budget_bytes=b,
                context_bytes=est.context_bytes,
                min_budget_bytes=est.min_budget_bytes,
                kv_cache_bytes=est.kv_cache_bytes(b),
                kv_tokens=est.kv_tokens(b),
                max_concurrency=est.max_concurrency(b),
                max_model_len=est.max_model_len,
                max_num_seqs=est.max_num_seqs,
                free_at_start_bytes=free_now,
                estimate=est,
            )
        )
        free_now -= est.context_bytes + b
    return out
