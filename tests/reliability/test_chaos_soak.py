"""The chaos soak at CI size (issue 18): a seeded random sequence of operations (swap, start,
stop, restart, sleep, wake, reloads valid and invalid, engine SIGKILL/SIGSTOP, daemon SIGKILL
idle and mid-operation, Ollama and the hub down and back, a cloud echoing its key) under
open-loop client traffic, every invariant checked after every step (see ``reliability.soak``).

``GPUMGR_SOAK_SEED`` and ``GPUMGR_SOAK_STEPS`` replay a failure (the failure prints both and
the operation list); ``bench/soak.py`` runs the same soak longer.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from gpumgr.sim.harness import free_port
from reliability.rig import DEEPSEEK, QWEN_7B, QWEN_14B, WAIT_S, Rig, settings, vllm, wait_for
from reliability.soak import SEED_ENV, STEPS_ENV, plan_operations, run_soak

pytestmark = pytest.mark.slow

CI_SEED = 18
CI_STEPS = 200
"""About 40 s on the 2-core machine at load 1-2, 80-100 s at load 7 (issue 18 asks for >= 200)."""


# The suite's 120 s per-test guard is for a hang; this test is long by design (75 s measured
# beside three CPU burners, see CI_STEPS): its own step deadlines (CONVERGE_S) catch a hang.
@pytest.mark.timeout(600)
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


def _sleepy(name: str, port: int, repo: str, status: str) -> str:
    return vllm(name, port, repo, status=status, max_model_len=4096).replace(
        "    max_num_seqs: 4\n", "    max_num_seqs: 4\n    swap_mode: sleep\n")


def test_what_the_soak_found_a_sleeper_on_the_port_refuses_a_start_and_a_dead_sleeper_leaves_desired_state(
    tmp_path: Path,
) -> None:
    """Seeds 3 and 18 of the soak: the 14B asleep on the 7B's port made ``gpumgr start qwen-7b``
    (and ``restart``) wait for the port for good, holding the one-mutation slot; a sleeper
    SIGKILLed stayed ``asleep`` in ``desired.json`` while published ``down``."""
    a, b = free_port(), free_port()
    rig = Rig(tmp_path, _sleepy("qwen-7b", a, QWEN_7B, "standby") + _sleepy("qwen-14b", a, QWEN_14B, "active")
              + _sleepy("deepseek", b, DEEPSEEK, "standby"), settings())
    try:
        d = rig.daemon
        d.start()
        fourteen = int(d.wait_up("qwen-14b", WAIT_S)["pid"])
        status, lines = rig.control("swap", {"old": "qwen-14b", "new": "deepseek"})
        assert status == 200 and lines[-1]["ok"], lines
        d.wait_backend("qwen-14b", lambda x: x["state"] == "sleeping", WAIT_S, "14B asleep")
        assert rig.control("sleep", {"name": "deepseek"})[1][-1]["ok"]  # room for the 7B
        for op in ("start", "restart"):
            status, lines = rig.control(op, {"name": "qwen-7b"}, timeout_s=20)
            assert status == 200 and not lines[-1]["ok"], lines
            assert "held by qwen-14b (asleep)" in lines[-1]["error"], lines
        os.kill(fourteen, signal.SIGKILL)
        d.wait_backend("qwen-14b", lambda x: x["state"] == "stopped", WAIT_S, "dead sleeper stopped")
        desired = json.loads((tmp_path / "state" / "desired.json").read_text())
        wait_for(lambda: "qwen-14b" not in json.loads(
            (tmp_path / "state" / "desired.json").read_text())["backends"], 10,
            f"the dead sleeper out of desired.json ({desired})")
        status, lines = rig.control("start", {"name": "qwen-7b"})
        assert status == 200 and lines[-1]["ok"], lines  # the port is free again
        assert d.stop() == 0
    finally:
        rig.close()
