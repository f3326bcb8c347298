"""Reading vLLM's log: the memory it measured, its out-of-memory failures, its last error.

The sample lines are vLLM's own wording (engine-process prefix included), so the recognisers
are pinned to the text they will meet on the real box; the simulated engine's messages are
checked against the same recognisers.
"""

from __future__ import annotations

import pytest

from gpumgr.engines.vllm import OomKind, find_oom, is_oom, last_error_line, parse_memory_report
from gpumgr.sim.vllm_engine import memory as sim_memory

GIB = 1024**3

REAL_START = """\
INFO 11-20 09:14:02 [api_server.py:1896] vLLM API server version 0.33.0
(EngineCore_DP0 pid=4242) INFO 11-20 09:14:31 [gpu_model_runner.py:2653] Model loading took 5.2031 GiB and 27.117 seconds
(EngineCore_DP0 pid=4242) INFO 11-20 09:14:36 [gpu_worker.py:298] Memory profiling takes 4.72 seconds. Total non KV cache memory: 6.61GiB; torch peak memory increase: 0.42GiB; non-torch forward increase memory: 0.02GiB; weights memory: 5.20GiB.
(EngineCore_DP0 pid=4242) INFO 11-20 09:14:36 [gpu_worker.py:299] Available KV cache memory: 3.14 GiB
(EngineCore_DP0 pid=4242) INFO 11-20 09:14:37 [kv_cache_utils.py:1087] GPU KV cache size: 58,784 tokens
(EngineCore_DP0 pid=4242) INFO 11-20 09:14:37 [kv_cache_utils.py:1091] Maximum concurrency for 8,192 tokens per request: 7.18x
(EngineCore_DP0 pid=4242) INFO 11-20 09:14:49 [gpu_model_runner.py:3480] Graph capturing finished in 12 secs, took 0.41 GiB
INFO 11-20 09:14:52 [api_server.py:1971] Starting vLLM API server 0 on http://127.0.0.1:8001
""".splitlines()  # noqa: E501


def test_memory_report_reads_what_vllm_measured_at_start() -> None:
    report = parse_memory_report(REAL_START)
    assert report.complete
    assert report.weights_bytes == round(5.2031 * GIB)
    assert report.activation_bytes == round(0.42 * GIB)
    assert report.cuda_graph_bytes == round(0.41 * GIB)
    assert report.kv_cache_bytes == round(3.14 * GIB)
    assert report.kv_cache_tokens == 58_784
    assert report.max_model_len == 8192
    assert report.max_concurrency == pytest.approx(7.18)


def test_memory_report_of_a_log_without_a_finished_start_is_incomplete() -> None:
    report = parse_memory_report(REAL_START[:2])
    assert not report.complete
    assert report.weights_bytes is not None and report.kv_cache_bytes is None


def test_startup_refusal_is_an_oom_that_a_later_retry_may_pass() -> None:
    line = (
        "(EngineCore_DP0 pid=77) ValueError: Free memory on device cuda:0 (5.12/15.73 GiB) on "
        "startup is less than desired GPU memory utilization (0.62, 9.75 GiB). Decrease GPU "
        "memory utilization or reduce GPU memory used by other processes."
    )
    found = find_oom(["INFO starting", line])
    assert found is not None and found.kind is OomKind.FREE_MEMORY_AT_START
    assert (found.free_gib, found.total_gib, found.fraction, found.requested_gib) == (
        5.12, 15.73, 0.62, 9.75)  # fmt: skip
    assert not found.same_slice_would_fail_again


def test_no_room_for_the_kv_cache_wins_over_the_generic_cuda_message_after_it() -> None:
    lines = [
        "ValueError: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization` when initializing the engine.",
        "RuntimeError: Engine core initialization failed. CUDA out of memory in worker",
    ]
    found = find_oom(lines)
    assert found is not None and found.kind is OomKind.NO_KV_CACHE
    assert found.same_slice_would_fail_again


def test_kv_cache_too_small_for_max_model_len_carries_the_estimated_length() -> None:
    line = (
        "ValueError: To serve at least one request with the models's max seq len (32768), "
        "(1.75 GiB KV cache) is needed, which is larger than the available KV cache memory "
        "(0.50 GiB). Based on the available memory, the estimated maximum model length is 9344. "
        "Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
        "initializing the engine."
    )
    found = find_oom([line])
    assert found is not None and found.kind is OomKind.KV_TOO_SMALL
    assert (found.needed_kv_gib, found.available_kv_gib) == (1.75, 0.5)
    assert found.estimated_max_model_len == 9344


def test_torch_cuda_oom_is_recognised() -> None:
    assert is_oom(["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 260.00 MiB."])
    assert is_oom(["RuntimeError: CUDA error: out of memory"])


def test_other_failures_are_not_oom() -> None:
    assert not is_oom(REAL_START)
    assert not is_oom(["RuntimeError: CUDA error: an illegal memory access was encountered"])
    assert not is_oom(["OSError: [Errno 98] Address already in use"])


def test_last_error_line_prefers_the_exception_over_later_error_logs() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "core.py", line 701, in run_engine_core',
        "(EngineCore_DP0 pid=9) RuntimeError: CUDA error: an illegal memory access was encountered",
        "ERROR 11-20 09:20:01 [core.py:710] EngineCore failed to start.",
    ]
    assert last_error_line(lines) == (
        "RuntimeError: CUDA error: an illegal memory access was encountered"
    )
    assert last_error_line(["ERROR 11-20 [x.py] boom"]) == "ERROR 11-20 [x.py] boom"
    assert last_error_line(REAL_START) is None


def test_the_simulated_engines_messages_are_recognised_like_vllms() -> None:
    refusal = sim_memory.free_memory_error(5 * GIB, 16 * GIB, 0.62)
    assert refusal is not None
    found = find_oom([refusal])
    assert found is not None and found.kind is OomKind.FREE_MEMORY_AT_START
    assert found.fraction == 0.62 and found.requested_gib == pytest.approx(9.92)
    assert find_oom([sim_memory.NO_CACHE_BLOCKS]).kind is OomKind.NO_KV_CACHE  # type: ignore[union-attr]
    cuda = sim_memory.cuda_oom_error(260 * 2**20, 16 * GIB, 2**20, 9 * GIB)
    assert find_oom([cuda]).kind is OomKind.CUDA_OOM  # type: ignore[union-attr]
    assert not is_oom([sim_memory.profiling_error(8 * GIB, 9 * GIB)])
