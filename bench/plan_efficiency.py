"""How much of the usable memory the planner hands out, and whether vLLM would accept it.

Over N random scenarios (seeded: cards of 8-80 GiB, a display/foreign load, an Ollama
resident set and reservation, a reserve, 1-4 vLLM providers drawn from the example models and
random ones, some pinned), it plans each GPU and reports:

* feasible / infeasible counts (every infeasible plan must name a provider and a shortfall);
* the share of usable memory (free + reclaimable - Ollama's extra room - reserve) that a feasible
  plan hands out as contexts + budgets, overall and where no instance is pinned or hit its
  KV cap (there, anything below 1.0 is the rounding down to 0.01 of the card);
* the instance starts vLLM's own check would refuse when the plan is applied in order (free
  memory after the instance's CUDA context below ceil(fraction x total)), with the CUDA context
  at the planner's estimate and at the simulated engine's 500 MiB. Must be 0.
* the same starts under vLLM 0.34's memory model (extensible KV cache: the fraction is a cap, no
  refusal; the KV cache shrinks by whatever the slice lacks after the context): starts refused
  (not one request fits), starts with less KV cache than planned, and starts below the plan's
  promise (whole requests at max_model_len: ``degraded``). Also at the H200's measured context
  with cuBLAS (710 MiB) against a plan that assumed 512 MiB, to show what a wrong constant costs
  under each model. The share handed out is the same under both (gpumgr passes the same fraction).

Usage: python bench/plan_efficiency.py [--scenarios 1000] [--seed 3]
Writes bench/results/plan_efficiency.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from typing import Any

from _report import header, print_rows, results_path, write_result

from gpumgr.plan import InstanceRequest, OllamaModel, PlanRequest, VramPlan, estimate, plan_slices

MIB = 1 << 20
GIB = 1 << 30
SIM_CONTEXT_MIB = 500
H200_CUBLAS_CONTEXT_MIB = 710
"""docs/gpu-check.md: a torch context with a cuBLAS handle on the H200 (cc 9.0)."""

# (weights GiB, KV bytes/token, typical max_model_len) of the example models (DESIGN.md §3)
EXAMPLES = [(5.2, 56 * 1024, 8192), (9.3, 192 * 1024, 8192), (3.6, 512 * 1024, 4096),
            (4.1, 128 * 1024, 8192)]


def scenario(rng: random.Random) -> PlanRequest:
    total = rng.choice([8192, 12288, 16384, 16384, 16384, 24576, 49152, 81920]) * MIB
    foreign = rng.choice([0, 300, 300, 512, 1024, rng.randint(0, 4096)]) * MIB
    ollama = tuple(OllamaModel(f"m{i}", rng.randint(512, 6144) * MIB)
                   for i in range(rng.choice([0, 0, 1, 2])))
    held = sum(m.vram_bytes for m in ollama)
    instances = []
    for i in range(rng.choice([1, 1, 2, 2, 3, 4])):
        if rng.random() < 0.7:
            w_gib, kv, max_len = rng.choice(EXAMPLES)
        else:
            w_gib, kv = rng.uniform(0.5, 20), rng.choice([16, 56, 128, 192, 512]) * 1024
            max_len = rng.choice([2048, 4096, 8192, 16384, 32768])
        e = estimate(weights_bytes=int(w_gib * GIB), kv_bytes_per_token=kv, max_model_len=max_len,
                     max_num_seqs=rng.choice([4, 8, 16, 64, 256]),
                     enforce_eager=rng.random() < 0.2)
        pin = rng.randint(20, 90) / 100 if rng.random() < 0.15 else None
        instances.append(InstanceRequest(f"p{i}", e, pin))
    return PlanRequest(
        total_bytes=total, free_bytes=max(0, total - foreign - held), instances=tuple(instances),
        reserve_bytes=rng.choice([0, 256, 256, 512, 1024]) * MIB, ollama_models=ollama,
        ollama_reservation_bytes=rng.choice([0, 0, 2048, 4096]) * MIB,
    )


def refused_starts(plan: VramPlan, context_bytes: int | None) -> int:
    """Starts vLLM would refuse applying the plan in order (context None: the planned one)."""
    free = plan.request.startable_free_bytes
    refused = 0
    for inst in plan.instances:
        free -= inst.context_bytes if context_bytes is None else context_bytes
        if free < math.ceil(plan.request.total_bytes * inst.fraction):
            refused += 1
        free -= inst.budget_bytes
    return refused


def outcomes_034(plan: VramPlan, context_bytes: int | None) -> tuple[int, int, int]:
    """(refused, shrunk, below the promise) applying the plan in order under 0.34's model."""
    free = plan.request.startable_free_bytes
    refused = shrunk = below = 0
    for inst in plan.instances:
        free -= inst.context_bytes if context_bytes is None else context_bytes
        lack = max(0, math.ceil(plan.request.total_bytes * inst.fraction) - free)
        kvpt = inst.estimate.kv_bytes_per_token
        tokens = (inst.kv_cache_bytes - lack) // kvpt if kvpt else inst.kv_tokens
        promise = max(1, math.floor(inst.max_concurrency + 1e-9)) * inst.max_model_len
        if tokens < inst.max_model_len:
            refused += 1
        elif lack > 0:
            shrunk += 1
            below += tokens < promise
        free -= inst.budget_bytes - lack
    return refused, shrunk, below


def run(n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    shares, shares_uncapped = [], []
    feasible = infeasible = unexplained = starts = 0
    refused_planned = refused_sim = refused_h200 = 0
    v034 = {"planned": [0, 0, 0], "sim_500": [0, 0, 0], "h200_710": [0, 0, 0]}
    t0 = time.perf_counter()
    for _ in range(n):
        plan = plan_slices(scenario(rng))
        if not plan.feasible:
            infeasible += 1
            names = {r.provider for r in plan.request.instances}
            if not all(p.provider in names and p.shortfall_bytes > 0 for p in plan.problems):
                unexplained += 1
            continue
        feasible += 1
        starts += len(plan.instances)
        refused_planned += refused_starts(plan, None)
        refused_sim += refused_starts(plan, SIM_CONTEXT_MIB * MIB)
        refused_h200 += refused_starts(plan, H200_CUBLAS_CONTEXT_MIB * MIB)
        for key, ctx in (("planned", None), ("sim_500", SIM_CONTEXT_MIB * MIB),
                         ("h200_710", H200_CUBLAS_CONTEXT_MIB * MIB)):
            for i, v in enumerate(outcomes_034(plan, ctx)):
                v034[key][i] += v
        usable = plan.request.available_bytes
        share = plan.handed_out_bytes / usable if usable > 0 else 1.0
        shares.append(share)
        if all(i.budget_bytes + plan.request.total_bytes // 100 < i.estimate.useful_budget_bytes
               and not i.pinned for i in plan.instances):
            shares_uncapped.append(share)
    elapsed = time.perf_counter() - t0

    def stats(xs: list[float]) -> dict[str, float]:
        if not xs:
            return {}
        xs = sorted(xs)
        return {"n": len(xs), "mean": round(statistics.fmean(xs), 4),
                "median": round(statistics.median(xs), 4), "p5": round(xs[len(xs) // 20], 4),
                "min": round(xs[0], 4), "max": round(xs[-1], 4)}

    return {
        **header("plan_efficiency"),
        "scenarios": n, "seed": seed, "feasible": feasible, "infeasible": infeasible,
        "infeasible_without_provider_and_shortfall": unexplained,
        "instance_starts": starts,
        "refused_starts_planned_context": refused_planned,
        "refused_starts_sim_context_500mib": refused_sim,
        "refused_starts_h200_context_710mib_planned_512": refused_h200,
        "v0_34_refused_shrunk_degraded_planned_context": v034["planned"],
        "v0_34_refused_shrunk_degraded_sim_context_500mib": v034["sim_500"],
        "v0_34_refused_shrunk_degraded_h200_context_710mib_planned_512": v034["h200_710"],
        "share_of_usable_memory_handed_out": stats(shares),
        "share_where_none_capped_or_pinned": stats(shares_uncapped),
        "plans_per_second": round(n / elapsed, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    result = run(args.scenarios, args.seed)
    print_rows([("metric", "value"), *((k, json.dumps(v)) for k, v in result.items()
                                       if k not in ("benchmark", "measured_at", "machine"))])
    write_result(result, results_path("plan_efficiency"))


if __name__ == "__main__":
    main()
