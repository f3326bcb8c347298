"""From a registry provider and its model's facts to the planner's ``InstanceRequest``. Pure.

The caller gathers the facts (config.json dimensions, the snapshot's safetensors bytes, the hub's
file sizes); this module applies the precedence rules of ``gpumgr.plan.estimate``.
"""

from __future__ import annotations

from gpumgr.config.registry import Provider
from gpumgr.modelfiles import ModelDims
from gpumgr.plan.estimate import (
    PlannerConstants,
    estimate,
    resolve_max_model_len,
    resolve_weights_bytes,
)
from gpumgr.plan.model import InstanceRequest


def instance_request(
    provider: Provider,
    dims: ModelDims,
    *,
    constants: PlannerConstants,
    snapshot_weights_bytes: int | None = None,
    hub_weights_bytes: int | None = None,
) -> InstanceRequest:
    """The planner's input for one vLLM provider (raises ``EstimateError`` without a size)."""
    model = provider.vllm_model
    weights, source = resolve_weights_bytes(
        snapshot_weights_bytes, hub_weights_bytes, model.model_size_gb if model else None
    )
    max_len = resolve_max_model_len(
        provider.max_model_len,
        model.context_length if model else None,
        constants,
        dims.max_position_embeddings,
    )
    est = estimate(
        weights_bytes=weights,
        weights_source=source,
        kv_bytes_per_token=dims.kv_bytes_per_token(),
        max_model_len=max_len,
        max_num_seqs=provider.max_num_seqs,
        enforce_eager=provider.enforce_eager,
        constants=constants,
    )
    return InstanceRequest(
        provider=provider.name, estimate=est, pinned_fraction=provider.gpu_memory_utilization
    )
