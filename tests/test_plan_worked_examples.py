"""The worked examples of issue 3 on the reference card (Quadro RTX 5000, 16384 MiB).

Every example: 300 MiB held by the display, the default 256 MiB reserve, no Ollama, default
planner constants (CUDA context 512 MiB outside the budget; activation 512 + CUDA graphs 384
inside it; 256 MiB safety margin in the minimum), KV bytes per token from the shipped
config.json files, AWQ weights 5.2 / 9.3 / 3.6 GiB (DESIGN.md §3), max_num_seqs 256.
Available to the plan: 16384 - 300 - 256 = 15828 MiB, contexts included.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gpumgr.modelfiles import read_model_dims
from gpumgr.plan import InstanceRequest, PlanRequest, VramPlan, estimate, plan_slices

MIB = 1 << 20
GIB = 1 << 30
TOTAL = 16384 * MIB
MODELS = Path(__file__).parent / "data" / "models"


def _kv(model: str) -> int:
    return read_model_dims(MODELS / model).kv_bytes_per_token()


def _req(name: str, model: str, weights_gib: float, max_model_len: int) -> InstanceRequest:
    return InstanceRequest(
        name,
        estimate(
            weights_bytes=int(weights_gib * GIB),
            kv_bytes_per_token=_kv(model),
            max_model_len=max_model_len,
        ),
    )


Q7 = ("qwen-7b", "qwen2.5-coder-7b-instruct-awq", 5.2, 8192)
Q14 = ("qwen-14b", "qwen2.5-coder-14b-instruct-awq", 9.3, 8192)
DS = ("deepseek-6.7b", "deepseek-coder-6.7b-instruct-awq", 3.6, 4096)


def _plan(*specs: tuple[str, str, float, int]) -> VramPlan:
    return plan_slices(
        PlanRequest(
            total_bytes=TOTAL,
            free_bytes=TOTAL - 300 * MIB,
            reserve_bytes=256 * MIB,
            instances=tuple(_req(*s) for s in specs),
        )
    )


def _vllm_would_start_all(plan: VramPlan) -> bool:
    """vLLM's own check, instance by instance in start order, on the memory the plan predicts."""
    free = plan.request.free_bytes
    for i in plan.instances:
        free -= i.context_bytes
        if free < math.ceil(TOTAL * i.fraction):
            return False
        free -= i.budget_bytes
    return True


def test_kv_bytes_per_token_from_published_dims() -> None:
    assert _kv(Q7[1]) == 56 * 1024
    assert _kv(Q14[1]) == 192 * 1024
    assert _kv(DS[1]) == 512 * 1024


@pytest.mark.parametrize("spec", [Q7, Q14, DS], ids=lambda s: s[0])
def test_one_model_alone_gets_093(spec: tuple[str, str, float, int]) -> None:
    """Alone, each model's KV need at 256 sequences (7B: 112 GiB, 14B: 384 GiB, deepseek:
    512 GiB) dwarfs the card, so the cap never binds and the instance takes everything: 15828 -
    512 context = 15316 MiB, i.e. 0.9348 of the card, rounded down to 0.93 (15237 MiB budget)."""
    plan = _plan(spec)
    assert plan.feasible
    (inst,) = plan.instances
    assert inst.fraction == 0.93
    assert inst.budget_bytes == math.ceil(TOTAL * 0.93)
    assert _vllm_would_start_all(plan)


def test_qwen_7b_alone_predicts_vllm_start_up_figures() -> None:
    """Budget 15237 MiB - weights 5325 - activation 512 - graphs 384 = 9016 MiB of KV at 56 KiB
    per token: ~164.8k tokens, 20.1 sequences of 8192 tokens."""
    inst = _plan(Q7).instances[0]
    assert inst.kv_cache_bytes // MIB == 9016
    assert inst.kv_tokens == 164_864
    assert inst.max_concurrency == pytest.approx(20.12, abs=0.01)


def test_qwen_14b_alone_fits_with_three_full_sequences() -> None:
    """14B: minimum = 9523 weights + 896 overhead + 256 margin + 1536 MiB (8192 x 192 KiB) =
    12211 MiB (0.75 of the card); at 0.93 the KV cache holds 25680 tokens, 3.1 sequences."""
    inst = _plan(Q14).instances[0]
    assert inst.min_budget_bytes // MIB == 12211
    assert inst.kv_tokens == 25_680
    assert inst.max_concurrency == pytest.approx(3.13, abs=0.01)


def test_deepseek_alone_at_4096_tokens() -> None:
    """No grouped KV heads: 512 KiB per token, so one 4096-token sequence is 2 GiB of KV."""
    inst = _plan(DS).instances[0]
    assert inst.min_budget_bytes // MIB == 3686 + 896 + 256 + 2048
    assert inst.max_concurrency == pytest.approx(5.2, abs=0.01)


def test_qwen_7b_and_deepseek_share_the_card() -> None:
    """Minimums 6925 MiB (7B, 0.43 rounded up) and 6886 MiB (deepseek, 0.43) plus two 512 MiB
    contexts leave ~1.4 GiB of surplus. It is shared by KV need at max_model_len x max_num_seqs
    (7B 112 GiB : deepseek 512 GiB, i.e. 18 % : 82 %), so deepseek, whose tokens cost 9x
    more, gets the larger slice: 0.44 and 0.46. Footprint: 512 + 7208 + 512 + 7536 = 15768 MiB,
    within the 15828 MiB available, so both of vLLM's start checks pass in order."""
    plan = _plan(Q7, DS)
    assert plan.feasible
    assert {i.provider: i.fraction for i in plan.instances} == {
        "qwen-7b": 0.44,
        "deepseek-6.7b": 0.46,
    }
    assert plan.handed_out_bytes <= plan.request.available_bytes
    assert _vllm_would_start_all(plan)
    for inst in plan.instances:
        assert inst.budget_bytes >= inst.min_budget_bytes
        assert inst.max_concurrency >= 1.0


def test_qwen_7b_and_14b_do_not_fit_together() -> None:
    """12211 + 6925 MiB of minimums plus two contexts is 20 GiB on a 16 GiB card."""
    plan = _plan(Q7, Q14)
    assert not plan.feasible
    (problem,) = plan.problems
    assert problem.provider == "qwen-7b"  # the 14B starts first (larger minimum)
    assert problem.shortfall_mib == 4530
    assert "plan without qwen-7b" in problem.fixes
