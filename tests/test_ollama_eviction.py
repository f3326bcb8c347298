"""Room from Ollama: a vLLM start that needs the memory of an Ollama model unloads it (policy
``unload_idle``), and until that start is over the status says the model is unavailable, so the
router does not send it requests that would load it straight back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpumgr.sim.harness import FAST_HEALTH_YAML, DaemonHarness, create_sim_gpu, free_port, sim_gpu_path
from gpumgr.sim.ollama_process import start_sim_ollama

pytestmark = pytest.mark.slow


def test_an_ollama_model_unloaded_for_a_start_is_unavailable_until_the_engine_serves(
    tmp_path: Path,
) -> None:
    create_sim_gpu(tmp_path)
    ollama = start_sim_ollama(
        ["llama3.1:latest"], loaded=["llama3.1:latest"], sizes_mib={"llama3.1:latest": 6000},
        env={**os.environ, "GPUMGR_SIM_GPU_STATE": str(sim_gpu_path(tmp_path))},
    )
    providers = f"""providers:
  ollama:
    type: ollama
    base_url: {ollama.base_url}
    models: [llama3.1:latest]
  qwen-14b:
    type: vllm
    base_url: http://127.0.0.1:{free_port()}
    max_model_len: 8192
    max_num_seqs: 4
    env:
      GPUMGR_SIM_LOAD_SECONDS: "2"
    models:
      - name: qwen-coder-14b
        hf_repo: Qwen/Qwen2.5-Coder-14B-Instruct-AWQ
"""
    settings = FAST_HEALTH_YAML.format(restart_after_s=60) + "ollama:\n  eviction: unload_idle\n"
    daemon = DaemonHarness(tmp_path, providers, settings)
    try:
        daemon.start()
        sse = daemon.sse()
        evicted = daemon.wait_backend(
            "ollama", lambda b: "llama3.1:latest" in (b.get("unavailable_models") or {}), 60)
        assert "unloaded to make room for qwen-14b" in evicted["unavailable_models"]["llama3.1:latest"]
        assert daemon.backend("qwen-14b")["state"] in ("downloading", "starting", "up")
        daemon.wait_up("qwen-14b", 60)
        daemon.wait_backend("ollama", lambda b: not b.get("unavailable_models"), 30)
        assert daemon.status()["models"]["llama3.1:latest"]["available"]
        frames = [f for _, f in sse.frames if f.get("name") == "ollama"]
        assert any("llama3.1:latest" in (f.get("unavailable_models") or {}) for f in frames)
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
        ollama.stop()
