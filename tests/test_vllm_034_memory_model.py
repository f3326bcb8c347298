"""vLLM 0.34's memory model (extensible KV cache) in the simulated engine and in gpumgr.

Under 0.33 an engine refuses to start when its slice is not free; under 0.34 the slice is a cap,
the engine starts anyway and commits the KV cache that the memory after warm-up allows, possibly
less than planned. gpumgr reads the committed blocks back (not the "GPU KV cache size"
reservation) and calls a KV cache below the plan's promise ``degraded``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
from test_sim_vllm_engine import (  # noqa: F401 - fixtures
    CONTEXT_MIB,
    UUID,
    Engine,
    card,
    held_mib,
    qwen7b,
    start_engine,
)

from helpers import wait_for as wait_until

from gpumgr.engines.vllm_kv import KvReading, minimum_tokens, read_kv
from gpumgr.engines.vllm_log import find_oom, parse_memory_report
from gpumgr.sim.gpu import SimGpuState
from gpumgr.sim.vllm_engine import memory as mem
from gpumgr.sim.vllm_engine.args import parse_args
from gpumgr.vllm_tables.releases import release_for

MIB = 1024**2
GIB = 1024**3
TOTAL = 16384 * MIB
KV_PER_TOKEN = 56 * 1024
WEIGHTS = int(5.2 * GIB)
V034 = {"GPUMGR_SIM_VLLM_VERSION": "0.34.0"}


def _extensible(free_after_gib: float, **kw: int | float) -> mem.EngineMemory:
    args: dict[str, int | float] = {
        "total_bytes": TOTAL, "fraction": 0.62, "weights_bytes": WEIGHTS,
        "kv_bytes_per_token": KV_PER_TOKEN, "max_model_len": 8192,
        "activation_bytes": 512 * MIB, "cuda_graph_bytes": 384 * MIB,
        "free_after_warmup_bytes": int(free_after_gib * GIB),
    }  # fmt: skip
    args.update(kw)
    return mem.size_extensible(**args)  # type: ignore[arg-type]


# -- pure --------------------------------------------------------------------------------------


def test_with_room_to_spare_the_cap_sizes_the_kv_cache_as_0_33_would() -> None:
    alone = _extensible(10.0)
    v033 = mem.size_engine(total_bytes=TOTAL, fraction=0.62, weights_bytes=WEIGHTS,
                           kv_bytes_per_token=KV_PER_TOKEN, max_model_len=8192,
                           activation_bytes=512 * MIB, cuda_graph_bytes=384 * MIB)  # fmt: skip
    assert alone.kv_cache_tokens == v033.kv_cache_tokens


def test_memory_taken_by_others_shrinks_the_kv_cache_instead_of_refusing_the_start() -> None:
    squeezed = _extensible(3.0)
    assert squeezed.kv_cache_bytes <= 3 * GIB - 512 * MIB
    assert squeezed.kv_cache_tokens < _extensible(10.0).kv_cache_tokens


def test_gpumgr_reads_the_committed_blocks_not_the_reserved_capacity() -> None:
    sized = _extensible(3.0)
    capacity = mem.capacity_tokens(TOTAL, 0.62, WEIGHTS, 512 * MIB, 384 * MIB, KV_PER_TOKEN)
    lines = [f"(EngineCore_DP0 pid=7) INFO 12-05 20:00:00 [{src}] {msg}"
             for src, msg in mem.extensible_log_lines(sized, 1.0, 0.62, TOTAL, 3 * GIB, capacity)]
    report = parse_memory_report(lines)
    assert report.kv_cache_tokens == capacity  # "GPU KV cache size" is the reservation
    assert report.actual_kv_tokens() == sized.kv_cache_tokens < capacity
    assert report.free_after_warmup_bytes == pytest.approx(3 * GIB, abs=0.01 * GIB)


def test_a_kv_cache_below_the_plans_whole_requests_is_a_shortfall() -> None:
    assert minimum_tokens(8192, 3.7) == 3 * 8192
    assert minimum_tokens(8192, 0.4) == 8192
    ok = KvReading(planned_tokens=40_000, minimum_tokens=32_768, actual_tokens=33_000)
    short = KvReading(planned_tokens=40_000, minimum_tokens=32_768, actual_tokens=20_000)
    assert ok.shortfall is None
    assert short.shortfall is not None and "20,000 tokens < the plan's minimum 32,768" in short.shortfall
    assert short.error == pytest.approx(-0.5)
    assert read_kv([], 40_000, 32_768).shortfall is None  # nothing logged: nothing claimed


def test_0_34_defaults_the_cap_to_1_and_the_escape_hatches_turn_the_cache_off() -> None:
    r = release_for("0.34.0")
    base = ["serve", "/m", "--max-model-len", "8192"]
    assert parse_args(base, r.flags, r.extensible_kv_cache).fraction == 1.0
    assert parse_args(base, r.flags, r.extensible_kv_cache).extensible_kv_cache
    for off in (["--no-enable-extensible-kv-cache"], ["--kv-cache-memory-bytes", "2G"],
                ["--num-gpu-blocks-override", "100"]):
        args = parse_args(base + off, r.flags, r.extensible_kv_cache)
        assert not args.extensible_kv_cache, off
        assert args.fraction == 0.92
    old = release_for("0.33.0")
    assert not parse_args(base, old.flags, old.extensible_kv_cache).extensible_kv_cache


# -- the simulated engine as a process -----------------------------------------------------------


def _others_hold(card: SimGpuState, mib: int) -> None:
    card.allocate(os.getpid(), UUID, mib, "other-process")


def test_sim_answers_version_with_the_release_it_imitates() -> None:
    def version(env: dict[str, str]) -> str:
        done = subprocess.run([sys.executable, "-m", "gpumgr.sim.vllm", "--version"],
                              env={**os.environ, **env}, capture_output=True, text=True,
                              check=True, timeout=60)  # fmt: skip
        return done.stdout.strip()

    assert version({}) == "0.33.0"
    assert version(V034) == "0.34.0"


def test_0_33_refuses_a_slice_that_is_not_free_but_0_34_starts_with_less_kv_cache(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    _others_hold(card, 7000)  # free: 16384 - 300 - 7000 ≈ 9 GiB < 0.62 × 16 GiB
    refused = start_engine()
    assert refused.wait_exit(timeout_s=30) == 1
    finding = find_oom(refused.log())
    assert finding is not None and finding.kind.value == "free_memory_at_start"

    engine = start_engine(env=V034)
    engine.wait_healthy(timeout_s=30)
    report = parse_memory_report(engine.log())
    planned = mem.capacity_tokens(TOTAL, 0.62, WEIGHTS, 512 * MIB, 384 * MIB, KV_PER_TOKEN)
    actual = report.actual_kv_tokens()
    assert actual is not None and 8192 <= actual < planned
    metrics = httpx2.get(engine.url + "/metrics").text
    assert f'num_gpu_blocks="{actual // 16}"' in metrics
    assert httpx2.get(engine.url + "/version").json()["version"] == "0.34.0"
    assert held_mib(card, engine.proc.pid) < CONTEXT_MIB + int(0.62 * 16384)


def test_0_34_with_the_extensible_cache_off_refuses_like_0_33(
    start_engine: Callable[..., Engine], card: SimGpuState
) -> None:
    _others_hold(card, 7000)
    engine = start_engine("--no-enable-extensible-kv-cache", env=V034)
    assert engine.wait_exit(timeout_s=30) == 1
    assert any("is less than desired GPU memory utilization" in ln for ln in engine.log())


def test_0_33_rejects_a_0_34_only_flag_like_the_real_parser(
    start_engine: Callable[..., Engine],
) -> None:
    engine = start_engine("--max-num-inflight-kv-loads", "2")
    assert engine.wait_exit(timeout_s=30) == 2
    assert any("unrecognized arguments: --max-num-inflight-kv-loads" in ln for ln in engine.log())
