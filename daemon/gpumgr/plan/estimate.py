"""Memory estimate of one vLLM instance: what it needs inside its budget and around it. Pure.

vLLM's ``--gpu-memory-utilization`` budget (fraction × TOTAL memory) has to hold the weights,
the activation peak of its profiling forward pass, the CUDA graphs it captures (none with
``--enforce-eager``) and the KV cache, which is "whatever remains" (DESIGN.md §3). The CUDA
context is created before the budget is measured and sits outside it. Every constant below is
named, sourced, and overridable in ``gpumgr.yaml`` ``planner:`` (``PlannerConstants.from_settings``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from gpumgr.config.settings import PlannerSettings
from gpumgr.plan.cuda_contexts import measured_context_bytes

MIB = 1024 * 1024
GIB = 1024 * MIB

DEFAULT_CUDA_CONTEXT_MIB = 512
"""Outside the budget, for a card whose compute capability has no measured row
(``gpumgr.plan.cuda_contexts``: H200, cc 9.0, measured 612 MiB bare and 710 MiB with cuBLAS). A
PyTorch CUDA context with cuBLAS handles on Turing shows 300-500 MiB in ``nvidia-smi`` before the
model loads; the simulated engine registers 500 MiB (``GPUMGR_SIM_CONTEXT_MIB``)."""

DEFAULT_ACTIVATION_MIB = 512
"""Inside the budget. The peak of vLLM's profiling forward pass, which runs one batch of
``max_num_batched_tokens``: 2048 for the OpenAI server on cards under 70 GiB (vLLM's chunked-prefill
default). For 7-14B models that is the MLP intermediate (2048 x 13.8-18.9k x fp16 x gate+up,
~150 MiB) plus the sampler's fp32 logits for ``max_num_seqs`` rows (256 x 152k vocab, ~150 MiB)
and their copies: 0.3-0.5 GiB, as vLLM's "activation peak memory" start-up line reads. Raise it
(``planner.activation_mib``) for larger ``--max-num-batched-tokens``."""

DEFAULT_CUDA_GRAPH_MIB = 384
"""Inside the budget, zero with ``--enforce-eager``. vLLM logs "Graph capturing finished in N secs,
took 0.2-0.5 GiB" for 7-14B models with its default capture sizes."""

DEFAULT_SAFETY_MARGIN_MIB = 256
"""Inside the budget, on top of the minimum: allocator fragmentation and the gap between our
estimate and vLLM's measurement. Only the minimum counts it; predicted KV does not."""

DEFAULT_MAX_NUM_SEQS = 256
"""vLLM's own default for ``--max-num-seqs`` (EngineArgs)."""

FALLBACK_MAX_MODEL_LEN = 4096
"""Used only when neither the provider, the model entry, gpumgr.yaml nor config.json says."""

KV_BLOCK_TOKENS = 16
"""vLLM's default ``--block-size``: the KV cache is counted in whole blocks of 16 tokens."""

WeightsSource = Literal["safetensors", "hub", "registry"]


class EstimateError(ValueError):
    """Not enough facts to estimate a provider (no weights size from any source)."""


@dataclass(frozen=True)
class PlannerConstants:
    """The constants in effect, in bytes (defaults above, overridden by ``planner:``)."""

    cuda_context_bytes: int = DEFAULT_CUDA_CONTEXT_MIB * MIB
    activation_bytes: int = DEFAULT_ACTIVATION_MIB * MIB
    cuda_graph_bytes: int = DEFAULT_CUDA_GRAPH_MIB * MIB
    safety_margin_bytes: int = DEFAULT_SAFETY_MARGIN_MIB * MIB
    default_max_model_len: int | None = None
    default_max_num_seqs: int = DEFAULT_MAX_NUM_SEQS

    @classmethod
    def from_settings(
        cls, s: PlannerSettings, compute_capability: str | None = None,
        card_context_bytes: int | None = None,
    ) -> PlannerConstants:
        """``planner:`` settings win; else the context recorded for the card's compute
        capability (``cuda_contexts.tsv``) or the default, raised to what engines were seen to
        take on this very card (``card_context_bytes``, ``gpumgr.gpu.contexts``)."""

        def mib(v: int | None, default: int) -> int:
            return (default if v is None else v) * MIB

        measured = measured_context_bytes(compute_capability) or DEFAULT_CUDA_CONTEXT_MIB * MIB
        context = (s.cuda_context_mib * MIB if s.cuda_context_mib is not None
                   else max(measured, card_context_bytes or 0))  # fmt: skip
        return cls(
            cuda_context_bytes=context,
            activation_bytes=mib(s.activation_mib, DEFAULT_ACTIVATION_MIB),
            cuda_graph_bytes=mib(s.cuda_graph_mib, DEFAULT_CUDA_GRAPH_MIB),
            safety_margin_bytes=mib(s.safety_margin_mib, DEFAULT_SAFETY_MARGIN_MIB),
            default_max_model_len=s.default_max_model_len,
            default_max_num_seqs=s.default_max_num_seqs or DEFAULT_MAX_NUM_SEQS,
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """What one vLLM instance needs. All sizes in bytes; ``kv_*`` per token or per sequence."""

    weights_bytes: int
    weights_source: WeightsSource
    kv_bytes_per_token: int
    max_model_len: int
    max_num_seqs: int
    enforce_eager: bool
    context_bytes: int
    activation_bytes: int
    cuda_graph_bytes: int
    safety_margin_bytes: int

    @property
    def non_kv_bytes(self) -> int:
        """Inside the budget but not KV: weights, activation peak, CUDA graphs."""
        return self.weights_bytes + self.activation_bytes + self.cuda_graph_bytes

    @property
    def one_sequence_kv_bytes(self) -> int:
        """KV for one full-length sequence: vLLM refuses to start with less."""
        return blocks_for(self.max_model_len) * KV_BLOCK_TOKENS * self.kv_bytes_per_token

    @property
    def min_budget_bytes(self) -> int:
        """The smallest budget that starts: non-KV + margin + one full-length sequence."""
        return self.non_kv_bytes + self.safety_margin_bytes + self.one_sequence_kv_bytes

    @property
    def full_kv_bytes(self) -> int:
        """KV for every sequence at full length: more KV than this buys nothing."""
        return self.one_sequence_kv_bytes * self.max_num_seqs

    @property
    def useful_budget_bytes(self) -> int:
        """The budget beyond which extra memory is idle (the surplus cap)."""
        return self.non_kv_bytes + self.safety_margin_bytes + self.full_kv_bytes

    def kv_cache_bytes(self, budget_bytes: int) -> int:
        """vLLM's "Available KV cache memory" for a budget: what remains after non-KV."""
        return max(0, budget_bytes - self.non_kv_bytes)

    def kv_tokens(self, budget_bytes: int) -> int:
        """vLLM's "GPU KV cache size: N tokens" (whole blocks)."""
        if self.kv_bytes_per_token <= 0:
            return 0
        blocks = self.kv_cache_bytes(budget_bytes) // (self.kv_bytes_per_token * KV_BLOCK_TOKENS)
        return blocks * KV_BLOCK_TOKENS

    def max_concurrency(self, budget_bytes: int) -> float:
        """vLLM's "Maximum concurrency for L tokens per request: C x"."""
        return self.kv_tokens(budget_bytes) / self.max_model_len

    def largest_max_model_len(self, budget_bytes: int, step_tokens: int = 256) -> int:
        """The largest ``max_model_len`` (a multiple of ``step_tokens``) whose one full sequence
        fits in ``budget_bytes`` with the margin; 0 when not even ``step_tokens`` fits."""
        room = budget_bytes - self.non_kv_bytes - self.safety_margin_bytes
        if room <= 0 or self.kv_bytes_per_token <= 0:
            return 0
        tokens = room // self.kv_bytes_per_token
        return int(tokens // step_tokens * step_tokens)


def blocks_for(tokens: int) -> int:
    return math.ceil(tokens / KV_BLOCK_TOKENS)


def resolve_weights_bytes(
    snapshot_bytes: int | None, hub_bytes: int | None, registry_model_size_gb: float | None
) -> tuple[int, WeightsSource]:
    """Weights size by precedence: the downloaded snapshot's safetensors headers (exact), the
    hub's file sizes (exact but before download), the registry's ``model_size_gb`` (a human's
    round number, read as GiB)."""
    if snapshot_bytes:
        return snapshot_bytes, "safetensors"
    if hub_bytes:
        return hub_bytes, "hub"
    if registry_model_size_gb:
        return int(registry_model_size_gb * GIB), "registry"
    raise EstimateError(
        "no weights size: not downloaded, no hub size given, and no model_size_gb in the registry"
    )


def resolve_max_model_len(
    provider_max_model_len: int | None,
    model_context_length: int | None,
    constants: PlannerConstants,
    config_max_position_embeddings: int | None,
) -> int:
    """Provider's ``max_model_len`` > the model entry's ``context_length`` > ``planner.
    default_max_model_len`` > config.json's ``max_position_embeddings`` (vLLM's own default)."""
    for v in (
        provider_max_model_len,
        model_context_length,
        constants.default_max_model_len,
        config_max_position_embeddings,
    ):
        if v:
            return v
    return FALLBACK_MAX_MODEL_LEN


def estimate(
    *,
    weights_bytes: int,
    kv_bytes_per_token: int,
    max_model_len: int,
    max_num_seqs: int | None = None,
    enforce_eager: bool = False,
    constants: PlannerConstants | None = None,
    weights_source: WeightsSource = "safetensors",
) -> MemoryEstimate:
    """The estimate for one instance from its facts and the constants in effect."""
    c = constants or PlannerConstants()
    return MemoryEstimate(
        weights_bytes=weights_bytes,
        weights_source=weights_source,
        kv_bytes_per_token=kv_bytes_per_token,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs or c.default_max_num_seqs,
        enforce_eager=enforce_eager,
        context_bytes=c.cuda_context_bytes,
        activation_bytes=c.activation_bytes,
        cuda_graph_bytes=0 if enforce_eager else c.cuda_graph_bytes,
        safety_margin_bytes=c.safety_margin_bytes,
    )
