"""The simulated engine's memory arithmetic follows vLLM 0.33's rules (pure, no processes)."""

from __future__ import annotations

import pytest

from gpumgr.engines.vllm import parse_memory_report
from gpumgr.sim.vllm_engine import memory as mem

MIB = 1024**2
GIB = 1024**3
TOTAL = 16384 * MIB
QWEN7B_KV_PER_TOKEN = 56 * 1024
QWEN7B_WEIGHTS = int(5.2 * GIB)


def _size(**kw: int | float) -> mem.EngineMemory:
    args: dict[str, int | float] = {
        "total_bytes": TOTAL, "fraction": 0.62, "weights_bytes": QWEN7B_WEIGHTS,
        "kv_bytes_per_token": QWEN7B_KV_PER_TOKEN, "max_model_len": 8192,
        "activation_bytes": 512 * MIB, "cuda_graph_bytes": 384 * MIB,
    }  # fmt: skip
    args.update(kw)
    return mem.size_engine(**args)  # type: ignore[arg-type]


def test_startup_check_is_ceil_of_fraction_times_total() -> None:
    wanted = mem.requested_bytes(TOTAL, 0.62)
    assert wanted == -(-TOTAL * 62 // 100)
    assert mem.free_memory_error(wanted, TOTAL, 0.62) is None
    message = mem.free_memory_error(wanted - 1, TOTAL, 0.62)
    assert message is not None and message.startswith("ValueError: Free memory on device cuda:0")
    assert "(0.62, 9.92 GiB)" in message


def test_kv_cache_is_what_the_budget_leaves_in_whole_blocks() -> None:
    sized = _size()
    budget = mem.requested_bytes(TOTAL, 0.62)
    assert sized.kv_cache_bytes == budget - QWEN7B_WEIGHTS - 512 * MIB - 384 * MIB
    assert sized.kv_cache_tokens % mem.BLOCK_SIZE_TOKENS == 0
    assert sized.kv_cache_tokens * QWEN7B_KV_PER_TOKEN <= sized.kv_cache_bytes
    assert sized.held_bytes == budget
    assert sized.max_concurrency == pytest.approx(sized.kv_cache_tokens / 8192)


def test_enforce_eager_buys_the_cuda_graph_memory_back_as_kv_cache() -> None:
    assert _size(cuda_graph_bytes=0).kv_cache_bytes - _size().kv_cache_bytes == 384 * MIB


def test_memory_others_allocated_during_profiling_is_charged_to_the_kv_cache() -> None:
    alone, overlapped = _size(), _size(others_grew_bytes=2 * GIB)
    assert alone.kv_cache_bytes - overlapped.kv_cache_bytes == 2 * GIB
    assert overlapped.held_bytes == alone.held_bytes - 2 * GIB


def test_a_slice_too_small_for_the_weights_has_no_kv_cache() -> None:
    with pytest.raises(mem.EngineStartError, match="No available memory for the cache blocks"):
        _size(fraction=0.35)


def test_a_kv_cache_smaller_than_one_request_names_the_length_that_would_fit() -> None:
    with pytest.raises(mem.EngineStartError, match="estimated maximum model length is") as info:
        _size(fraction=0.40, max_model_len=32768)
    assert "max seq len (32768)" in str(info.value)


def test_fixed_kv_cache_size_skips_profiling() -> None:
    sized = _size(kv_cache_memory_bytes=1 * GIB)
    assert sized.kv_cache_bytes == 1 * GIB


def test_the_startup_lines_parse_back_to_the_same_figures() -> None:
    sized = _size()
    lines = [f"INFO 11-20 09:14:31 [{src}] {msg}" for src, msg in mem.startup_log_lines(sized, 1.3)]
    report = parse_memory_report(lines)
    assert report.kv_cache_tokens == sized.kv_cache_tokens
    assert report.max_model_len == 8192
    assert report.kv_cache_bytes == pytest.approx(sized.kv_cache_bytes, abs=0.01 * GIB)
    assert report.weights_bytes == pytest.approx(QWEN7B_WEIGHTS, abs=0.01 * GIB)


def test_load_time_is_a_quarter_second_per_gib() -> None:
    assert mem.load_seconds(QWEN7B_WEIGHTS) == pytest.approx(1.3)
