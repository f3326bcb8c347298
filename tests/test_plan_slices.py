"""Slices beyond the worked examples: pins, the surplus rule, and how shortfalls explain themselves."""

from __future__ import annotations

import math
from typing import Any

from gpumgr.gpu import GpuInfo, GpuProcess
from gpumgr.plan import (
    InstanceRequest,
    MemoryHolder,
    OllamaModel,
    PlanRequest,
    VramPlan,
    estimate,
    plan_slices,
    request_for_gpu,
)

MIB = 1 << 20
GIB = 1 << 30
TOTAL = 16384 * MIB


def _req(name: str, weights_gib: float = 5.2, kv: int = 56 * 1024, max_len: int = 8192,
         seqs: int = 256, pin: float | None = None) -> InstanceRequest:
    e = estimate(weights_bytes=int(weights_gib * GIB), kv_bytes_per_token=kv,
                 max_model_len=max_len, max_num_seqs=seqs)
    return InstanceRequest(name, e, pin)


def _plan(*reqs: InstanceRequest, free_mib: int = 16084, **kw: Any) -> VramPlan:
    return plan_slices(PlanRequest(total_bytes=TOTAL, free_bytes=free_mib * MIB,
                                   reserve_bytes=256 * MIB, instances=reqs, **kw))


def test_pinned_fraction_is_kept_and_the_rest_goes_to_the_others() -> None:
    plan = _plan(_req("pinned", pin=0.45), _req("free", weights_gib=3.6, kv=512 * 1024, max_len=4096))
    assert plan.feasible
    assert plan.instance("pinned").fraction == 0.45
    assert plan.instances[0].provider == "pinned"  # pinned start first
    assert plan.handed_out_bytes <= plan.request.available_bytes
    # 15828 - (512 + 7373 pinned) - 512 = 7431 MiB left: 0.45 (7373 MiB), 0.46 would be 7537
    assert plan.instance("free").fraction == 0.45


def test_pin_that_cannot_hold_one_sequence_says_so_and_how_to_fix_it() -> None:
    plan = _plan(_req("qwen-7b", pin=0.3))
    (p,) = plan.problems
    assert p.provider == "qwen-7b"
    assert p.shortfall_mib == 2010
    assert p.fixes[0] == "raise gpu_memory_utilization of qwen-7b to 0.43"


def test_surplus_stops_where_more_kv_buys_nothing() -> None:
    """16 sequences of 8192 tokens at 56 KiB need 7 GiB of KV: the budget stops there and the
    rest of the card stays free (for Ollama), instead of becoming idle KV cache."""
    plan = _plan(_req("qwen-7b", seqs=16))
    inst = plan.instances[0]
    assert inst.fraction == 0.84
    assert inst.max_concurrency >= 16
    assert plan.unused_bytes > GIB


def test_capped_instance_leaves_its_share_to_the_other() -> None:
    small = _plan(_req("a", seqs=2), _req("b", weights_gib=3.6, kv=512 * 1024, max_len=4096))
    a, b = small.instance("a"), small.instance("b")
    assert a.max_concurrency < 3  # capped near 2 sequences
    assert b.fraction > a.fraction
    assert small.unused_bytes < TOTAL // 100  # b took everything a's cap left


def test_shortfall_offers_a_shorter_context_first() -> None:
    plan = _plan(_req("qwen-14b", weights_gib=9.3, kv=192 * 1024, max_len=32768))
    (p,) = plan.problems
    assert p.provider == "qwen-14b"
    assert p.fixes[0].startswith("set max_model_len of qwen-14b to ")
    longest = int(p.fixes[0].split(" to ")[1].split()[0])
    assert 8192 < longest < 32768 and longest % 256 == 0
    assert plan_slices_fits_with_len(longest)


def plan_slices_fits_with_len(max_len: int) -> bool:
    return _plan(_req("qwen-14b", weights_gib=9.3, kv=192 * 1024, max_len=max_len)).feasible


def test_shortfall_names_the_ollama_model_to_unload() -> None:
    """Ollama holds 6 GiB in two models; the 14B needs ~3.3 GiB more than is free: unloading
    the 4 GiB model alone is the nearest fix (the smallest single model that suffices)."""
    models = (OllamaModel("llama3.1:latest", 4 * GIB), OllamaModel("qwen2.5-coder:7b", 2 * GIB))
    plan = _plan(_req("qwen-14b", weights_gib=9.3, kv=192 * 1024), free_mib=16084 - 6144,
                 ollama_models=models)
    (p,) = plan.problems
    assert any(f.startswith("unload Ollama model llama3.1:latest") for f in p.fixes)


def test_unloading_does_not_help_below_the_ollama_reservation() -> None:
    models = (OllamaModel("llama3.1:latest", 4 * GIB),)
    plan = _plan(_req("qwen-14b", weights_gib=9.3, kv=192 * 1024), free_mib=16084 - 4096,
                 ollama_models=models, ollama_reservation_bytes=4 * GIB)
    assert not any("unload" in f for f in plan.problems[0].fixes)


def test_shortfall_names_the_running_provider_to_stop() -> None:
    plan = _plan(_req("qwen-14b", weights_gib=9.3, kv=192 * 1024), free_mib=16084 - 7700,
                 other_holders=(MemoryHolder("qwen-7b", 7700 * MIB),))
    assert "stop qwen-7b (holds 7700 MiB)" in plan.problems[0].fixes


def test_reserve_larger_than_free_memory_is_a_shortfall_not_a_crash() -> None:
    plan = _plan(_req("qwen-7b"), free_mib=100)
    assert not plan.feasible
    assert plan.problems[0].shortfall_bytes > 0


def test_request_counts_the_planned_providers_running_memory_as_free() -> None:
    gpu = GpuInfo(
        index=0, uuid="GPU-x", name="card", memory_total_bytes=TOTAL,
        memory_used_bytes=300 * MIB + 7700 * MIB + 2048 * MIB + 512 * MIB,
        memory_free_bytes=TOTAL - (300 + 7700 + 2048 + 512) * MIB,
        processes=(
            GpuProcess(10, 7700 * MIB, "vllm", owner="qwen-7b"),
            GpuProcess(11, 2048 * MIB, "ollama", owner="ollama"),
            GpuProcess(12, 512 * MIB, "python", owner="unknown"),
        ),
    )
    r = request_for_gpu(gpu, [_req("qwen-7b")], reserve_bytes=256 * MIB)
    assert r.reclaimable_bytes == 7700 * MIB
    assert r.ollama_held_bytes == 2048 * MIB
    assert r.available_bytes == (16384 - 300 - 2048 - 512 - 256) * MIB
    other = request_for_gpu(gpu, [_req("qwen-14b")], reserve_bytes=256 * MIB)
    assert other.reclaimable_bytes == 0
    assert other.other_holders == (MemoryHolder("qwen-7b", 7700 * MIB),)


def test_fractions_round_down_to_hundredths() -> None:
    for inst in _plan(_req("a"), _req("b", weights_gib=3.6, kv=512 * 1024, max_len=4096)).instances:
        assert inst.fraction == round(inst.fraction * 100) / 100
        assert inst.budget_bytes == math.ceil(TOTAL * inst.fraction)
