"""The simulated Ollama speaks Ollama's API: streaming NDJSON, keep_alive, VRAM on the sim GPU."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from gpumgr.sim.gpu import STATE_ENV, SimGpuSpec, SimGpuState, sim_uuid
from gpumgr.sim.ollama_models import FOREVER, parse_keep_alive
from gpumgr.sim.ollama_process import SimOllamaProcess, running_sim_ollama
from tests.helpers import wait_for


@pytest.fixture
def gpu(tmp_path: Path) -> SimGpuState:
    state = SimGpuState(tmp_path / "gpu.json")
    state.ensure([SimGpuSpec(0, sim_uuid(0)), SimGpuSpec(1, sim_uuid(1))])
    return state


@pytest.fixture
def ollama(gpu: SimGpuState) -> Iterator[SimOllamaProcess]:
    with running_sim_ollama(
        ["llama3.2", "qwen2.5-coder:7b"],
        sizes_mib={"llama3.2": 2000, "qwen2.5-coder:7b": 4700},
        env={STATE_ENV: str(gpu.path), "CUDA_VISIBLE_DEVICES": sim_uuid(1)},
    ) as sim:
        yield sim


def test_generate_streams_ndjson_and_ends_with_done(ollama: SimOllamaProcess) -> None:
    with httpx2.Client(base_url=ollama.base_url) as c:
        with c.stream("POST", "/api/generate", json={"model": "llama3.2", "prompt": "hi"}) as r:
            assert r.headers["content-type"].startswith("application/x-ndjson")
            chunks = [json.loads(line) for line in r.iter_lines() if line]
    assert len(chunks) > 2
    assert all(not ch["done"] for ch in chunks[:-1]) and chunks[-1]["done"] is True
    assert chunks[-1]["done_reason"] == "stop" and chunks[-1]["eval_count"] == len(chunks) - 1
    text = "".join(ch["response"] for ch in chunks)
    assert text == "This is a simulated answer from llama3.2:latest."


def test_chat_without_streaming_answers_one_message(ollama: SimOllamaProcess) -> None:
    with httpx2.Client(base_url=ollama.base_url) as c:
        r = c.post("/api/chat", json={"model": "qwen2.5-coder:7b", "stream": False,
                                      "messages": [{"role": "user", "content": "hi"}]})
    body = r.json()
    assert r.status_code == 200 and body["done"] is True
    assert body["message"]["role"] == "assistant" and "qwen2.5-coder:7b" in body["message"]["content"]


def test_model_not_pulled_is_404_like_ollama(ollama: SimOllamaProcess) -> None:
    with httpx2.Client(base_url=ollama.base_url) as c:
        r = c.post("/api/chat", json={"model": "mistral", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json() == {"error": "model 'mistral' not found"}


def test_loaded_models_hold_vram_on_the_chosen_card_until_keep_alive_expires(
    ollama: SimOllamaProcess, gpu: SimGpuState
) -> None:
    with httpx2.Client(base_url=ollama.base_url) as c:
        c.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False,
                                      "keep_alive": "600ms"})
        c.post("/api/generate", json={"model": "qwen2.5-coder:7b", "keep_alive": "5m"})
        ps = c.get("/api/ps").json()["models"]
        assert sorted(m["name"] for m in ps) == ["llama3.2:latest", "qwen2.5-coder:7b"]
        allocs = gpu.read().allocations
        assert [(a.pid, a.gpu_uuid, a.used_mib, a.process_name) for a in allocs] == [
            (ollama.pid, sim_uuid(1), 6700, "ollama")
        ]
        wait_for(lambda: [m["name"] for m in c.get("/api/ps").json()["models"]] == ["qwen2.5-coder:7b"])
    assert [a.used_mib for a in gpu.read().allocations] == [4700]


def test_keep_alive_zero_unloads_at_once(ollama: SimOllamaProcess, gpu: SimGpuState) -> None:
    with httpx2.Client(base_url=ollama.base_url) as c:
        c.post("/api/generate", json={"model": "llama3.2", "keep_alive": -1})
        assert len(c.get("/api/ps").json()["models"]) == 1
        r = c.post("/api/generate", json={"model": "llama3.2", "keep_alive": 0})
        assert r.json()["done_reason"] == "unload"
        assert c.get("/api/ps").json()["models"] == []
    assert gpu.read().allocations == ()


def test_sigterm_releases_the_vram_and_sigkill_leaves_it_to_the_driver(gpu: SimGpuState) -> None:
    for stop in ("terminate", "kill"):
        with running_sim_ollama(["llama3.2"], loaded=["llama3.2"], env={STATE_ENV: str(gpu.path)}) as sim:
            assert len(gpu.read().allocations) == 1
            getattr(sim.proc, stop)()
            sim.proc.wait(5)
        assert gpu.read().allocations == ()


def test_down_mode_answers_503_and_recovers(ollama: SimOllamaProcess) -> None:
    with httpx2.Client(base_url=ollama.base_url) as c:
        ollama.set_mode("down")
        assert c.get("/api/version").status_code == 503
        ollama.set_mode("ok")
        assert c.get("/api/version").json()["version"]


def test_keep_alive_accepts_ollamas_forms() -> None:
    assert parse_keep_alive(None) == 300.0
    assert parse_keep_alive(0) == 0.0 and parse_keep_alive("0") == 0.0
    assert parse_keep_alive("1h30m") == 5400.0 and parse_keep_alive("250ms") == 0.25
    assert parse_keep_alive(-1) == FOREVER and parse_keep_alive("-1m") == FOREVER
    with pytest.raises(ValueError):
        parse_keep_alive("soon")
