"""``gpumgr plan`` says which vLLM each provider runs and which memory model follows."""

from __future__ import annotations

import json

from test_plan_cli import _run, env  # noqa: F401 - fixture


def test_plan_json_names_the_release_its_memory_model_and_the_kv_minimum(
    env: dict[str, str],  # noqa: F811
) -> None:
    r = _run({**env, "GPUMGR_SIM_VLLM_VERSION": "0.34.0"}, "plan", "--simulate", "--json")
    assert r.exit_code == 0, r.output
    (inst,) = json.loads(r.stdout)["gpus"][0]["instances"]
    assert inst["vllm_version"] == "0.34.0" and inst["memory_model"] == "extensible_kv_cache"
    assert inst["kv_cache_tokens_min"] == 16 * inst["max_model_len"]  # max_num_seqs 16


def test_plan_text_shows_the_release(env: dict[str, str]) -> None:  # noqa: F811
    r = _run(env, "plan", "--simulate")
    assert "qwen-7b: vLLM 0.33.0 (KV cache fixed at start" in r.stdout
