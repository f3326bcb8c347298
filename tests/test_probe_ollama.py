"""The Ollama probe against the simulated Ollama (a real process) on the simulated GPU."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from gpumgr.engines.ollama import NOT_PULLED, probe_ollama, unload_model
from gpumgr.engines.probe_result import ProbeOutcome, ProbeResult
from gpumgr.sim.gpu import STATE_ENV, SimGpuSpec, SimGpuState, sim_uuid
from gpumgr.sim.ollama_process import SimOllamaProcess, running_sim_ollama

MIB = 1024 * 1024


@pytest.fixture
def gpu(tmp_path: Path) -> SimGpuState:
    state = SimGpuState(tmp_path / "gpu.json")
    state.ensure([SimGpuSpec(0, sim_uuid(0), memory_total_mib=16384, display_used_mib=300)])
    return state


@pytest.fixture
def ollama(gpu: SimGpuState) -> Iterator[SimOllamaProcess]:
    with running_sim_ollama(
        ["qwen2.5-coder:7b", "llama3.1:8b"],
        loaded=["qwen2.5-coder:7b"],
        sizes_mib={"qwen2.5-coder:7b": 4700, "llama3.1:8b": 5000},
        env={STATE_ENV: str(gpu.path)},
    ) as sim:
        yield sim


def probe(base_url: str, configured: list[str], timeout_s: float = 1.0) -> ProbeResult:
    async def run() -> ProbeResult:
        async with httpx2.AsyncClient() as client:
            return await probe_ollama(client, base_url, configured, timeout_s)

    return asyncio.run(run())


def test_model_not_pulled_is_unavailable_with_the_reason(ollama: SimOllamaProcess) -> None:
    r = probe(ollama.base_url, ["qwen2.5-coder:7b", "deepseek-r1:14b"])
    assert r.outcome is ProbeOutcome.OK  # Ollama itself is up
    assert [(m.name, m.available, m.reason) for m in r.models] == [
        ("qwen2.5-coder:7b", True, ""),
        ("deepseek-r1:14b", False, NOT_PULLED),
    ]
    assert "not pulled: deepseek-r1:14b" in r.detail


def test_loaded_models_report_size_vram_and_show_on_the_gpu_as_ollama(
    ollama: SimOllamaProcess, gpu: SimGpuState
) -> None:
    r = probe(ollama.base_url, ["qwen2.5-coder:7b"])
    assert [(m.name, m.size_vram_bytes, m.spilled) for m in r.loaded] == [
        ("qwen2.5-coder:7b", 4700 * MIB, False)
    ]
    assert r.size_vram_bytes == 4700 * MIB
    procs = [(a.pid, a.used_mib, a.process_name) for a in gpu.read().allocations]
    assert procs == [(ollama.pid, 4700, "ollama")]


def test_model_squeezed_onto_the_cpu_is_reported_spilled(
    ollama: SimOllamaProcess, gpu: SimGpuState
) -> None:
    # another process (this test, standing in for vLLM) takes most of what is left
    gpu.allocate(os.getpid(), sim_uuid(0), 16384 - 300 - 4700 - 2000, "vllm")
    try:
        async def load() -> None:
            async with httpx2.AsyncClient() as c:
                r = await c.post(ollama.base_url + "/api/generate",
                                 json={"model": "llama3.1:8b", "keep_alive": -1})
                assert r.json()["done_reason"] == "load"

        asyncio.run(load())
        r = probe(ollama.base_url, ["llama3.1:8b"])
        spilled = {m.name: (m.size_vram_bytes // MIB, m.spilled) for m in r.loaded}
        assert spilled["llama3.1:8b"] == (2000, True)
        assert "spilled to CPU: llama3.1:8b" in r.detail
    finally:
        gpu.release(os.getpid())


def test_unload_frees_the_models_vram(ollama: SimOllamaProcess, gpu: SimGpuState) -> None:
    async def run() -> bool:
        async with httpx2.AsyncClient() as c:
            return await unload_model(c, ollama.base_url, "qwen2.5-coder:7b", 2.0)

    assert asyncio.run(run()) is True
    assert probe(ollama.base_url, []).loaded == ()
    assert gpu.read().allocations == ()


def test_ollama_answering_503_is_unhealthy_and_hung_is_a_timeout(ollama: SimOllamaProcess) -> None:
    ollama.set_mode("down")
    assert probe(ollama.base_url, []).outcome is ProbeOutcome.UNHEALTHY
    ollama.set_mode("hang")
    assert probe(ollama.base_url, [], timeout_s=0.3).outcome is ProbeOutcome.TIMEOUT
    ollama.set_mode("ok")
    assert probe(ollama.base_url, []).outcome is ProbeOutcome.OK
