"""The chaos soak at CI size (issue 18): a seeded random sequence of operations (swap, start,
stop, restart, sleep, wake, reloads valid and invalid, engine SIGKILL/SIGSTOP, daemon SIGKILL
idle and mid-operation, Ollama and the hub down and back, a cloud echoing its key) under
open-loop client traffic, every invariant checked after every step (see ``reliability.soak``).

``GPUMGR_SOAK_SEED`` and ``GPUMGR_SOAK_STEPS`` replay a failure (the failure prints both and
the operation list); ``bench/soak.py`` runs the same soak longer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reliability.soak import SEED_ENV, STEPS_ENV, plan_operations, run_soak

pytestmark = pytest.mark.slow

CI_SEED = 18
CI_STEPS = 200
"""About 40 s on the 2-core machine at load 1-2, 80-100 s at load 7 (issue 18 asks for >= 200)."""


def test_a_seeded_chaos_soak_keeps_every_invariant_after_every_step(
    tmp_path: Path, record_property: pytest.RecordProperty,
) -> None:
    seed = int(os.environ.get(SEED_ENV) or CI_SEED)
    steps = int(os.environ.get(STEPS_ENV) or CI_STEPS)
    result = run_soak(tmp_path, seed, steps)
    assert len(result.records) == steps
    # every step's six invariants were checked, plus the first boot's
    assert result.checks_passed == 6 * (steps + 1)
    # the traffic ran all along, open loop, and nothing hung past its timeout
    assert result.requests["200"] > 0
    assert result.request_longest_s < 5  # the client's 2 s timeout, per phase
    kinds = {r.op.kind for r in result.records}
    assert {"swap", "reload_invalid", "daemon_sigkill"} <= kinds or steps < 100
    p50, p99 = result.converge_quantiles()
    record_property("soak", {"seed": seed, "steps": steps, "duration_s": round(result.duration_s, 1),
                             "converge_p50_s": round(p50, 3), "converge_p99_s": round(p99, 3),
                             "requests": dict(result.requests)})
    print(f"\nchaos soak seed {seed}: {steps} steps in {result.duration_s:.1f} s; converged "
          f"p50 {p50:.2f} s p99 {p99:.2f} s; requests {dict(result.requests)}")


def test_the_operation_list_is_the_seeds_alone() -> None:
    assert plan_operations(7, 300) == plan_operations(7, 300)
    assert plan_operations(7, 300) != plan_operations(8, 300)
    assert plan_operations(7, 300)[:50] == plan_operations(7, 50)
