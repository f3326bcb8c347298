"""The memory estimate of one vLLM instance: weights precedence, KV, constants and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumgr.config.registry import Provider
from gpumgr.config.settings import PlannerSettings
from gpumgr.modelfiles import header_only_safetensors, read_model_dims, weights_bytes
from gpumgr.plan import EstimateError, PlannerConstants, estimate, resolve_weights_bytes
from gpumgr.plan.estimate import DEFAULT_CUDA_GRAPH_MIB
from gpumgr.plan.provider import instance_request

MIB = 1 << 20
GIB = 1 << 30
Q7_DIR = Path(__file__).parent / "data" / "models" / "qwen2.5-coder-7b-instruct-awq"


def test_snapshot_safetensors_win_over_hub_and_registry(tmp_path: Path) -> None:
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(header_only_safetensors(3 * GIB))
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(header_only_safetensors(GIB))
    snap = weights_bytes(tmp_path)
    assert resolve_weights_bytes(snap, 5 * GIB, 9.9) == (4 * GIB, "safetensors")


def test_hub_size_used_before_download_and_registry_last() -> None:
    assert resolve_weights_bytes(None, 5 * GIB, 9.9) == (5 * GIB, "hub")
    assert resolve_weights_bytes(None, None, 5.2) == (int(5.2 * GIB), "registry")
    with pytest.raises(EstimateError):
        resolve_weights_bytes(None, None, None)


def test_enforce_eager_drops_the_cuda_graph_overhead() -> None:
    graphs = estimate(weights_bytes=GIB, kv_bytes_per_token=1024, max_model_len=4096)
    eager = estimate(
        weights_bytes=GIB, kv_bytes_per_token=1024, max_model_len=4096, enforce_eager=True
    )
    assert graphs.min_budget_bytes - eager.min_budget_bytes == DEFAULT_CUDA_GRAPH_MIB * MIB


def test_minimum_holds_one_full_length_sequence_in_whole_blocks() -> None:
    e = estimate(weights_bytes=GIB, kv_bytes_per_token=1000, max_model_len=4097)
    assert e.one_sequence_kv_bytes == 4112 * 1000  # 257 blocks of 16 tokens
    assert e.kv_tokens(e.min_budget_bytes) >= 4097


def test_gpumgr_yaml_overrides_every_constant() -> None:
    c = PlannerConstants.from_settings(
        PlannerSettings(
            cuda_context_mib=700, activation_mib=2048, cuda_graph_mib=0, safety_margin_mib=0,
            default_max_num_seqs=4,
        )
    )
    e = estimate(weights_bytes=GIB, kv_bytes_per_token=1024, max_model_len=1024, constants=c)
    assert e.context_bytes == 700 * MIB
    assert e.non_kv_bytes == GIB + 2048 * MIB
    assert e.max_num_seqs == 4
    assert e.useful_budget_bytes == e.non_kv_bytes + 4 * 1024 * 1024


def test_provider_knobs_reach_the_estimate() -> None:
    p = Provider.model_validate(
        {
            "name": "qwen-7b", "type": "vllm", "base_url": "http://127.0.0.1:8001",
            "max_model_len": 8192, "max_num_seqs": 16, "enforce_eager": True,
            "gpu_memory_utilization": 0.5,
            "models": [{"name": "q", "hf_repo": "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
                        "model_size_gb": 5.2, "context_length": 32768}],
        }
    )
    r = instance_request(p, read_model_dims(Q7_DIR), constants=PlannerConstants())
    assert r.pinned_fraction == 0.5
    assert r.estimate.weights_source == "registry"
    assert (r.estimate.max_model_len, r.estimate.max_num_seqs) == (8192, 16)
    assert r.estimate.cuda_graph_bytes == 0
    assert r.estimate.kv_bytes_per_token == 56 * 1024


def test_max_model_len_defaults_to_the_models_context_then_config_json() -> None:
    p = Provider.model_validate(
        {"name": "x", "type": "vllm", "base_url": "http://127.0.0.1:8001",
         "models": [{"name": "q", "model_size_gb": 5.2}]}
    )
    r = instance_request(p, read_model_dims(Q7_DIR), constants=PlannerConstants())
    assert r.estimate.max_model_len == 32768  # config.json max_position_embeddings
    c = PlannerConstants(default_max_model_len=4096)
    assert instance_request(p, read_model_dims(Q7_DIR), constants=c).estimate.max_model_len == 4096
