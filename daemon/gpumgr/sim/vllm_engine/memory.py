"""The simulated engine's memory arithmetic and vLLM's own messages about it (pure).

Mirrors vLLM 0.33's start (DESIGN.md §3): after its CUDA context exists, it refuses to start
when free memory < ceil(fraction × total); the KV cache is what the budget (fraction × total)
leaves after weights, activation peak and CUDA graphs, minus whatever other processes allocated
on the card while it was profiling (vLLM charges that to itself: why two instances must never
initialise together). Messages are vLLM's wording so that ``gpumgr.engines.vllm_log`` is tested
against the text it will meet on the real box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIB = 1024**2
GIB = 1024**3
BLOCK_SIZE_TOKENS = 16
"""vLLM's default KV block size: the cache holds a whole number of blocks."""

DEFAULT_CONTEXT_MIB = 500
DEFAULT_ACTIVATION_MIB = 512
"""Activation peak of a 7B–14B model profiled with vLLM's default chunked-prefill batch (2048
tokens): 0.3–0.5 GiB; the same figure as the planner's default (``gpumgr.plan.estimate``)."""
DEFAULT_CUDA_GRAPH_MIB = 384
"""CUDA graph capture for the default capture sizes: observed 0.3–0.5 GiB for 7B–14B models."""
LOAD_SECONDS_PER_GIB = 0.25


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.2f}"


def load_seconds(weights_bytes: int) -> float:
    """Simulated weight-loading time: 0.25 s per GiB (a 5 GiB model loads in about 1.3 s)."""
    return round(weights_bytes / GIB * LOAD_SECONDS_PER_GIB, 3)


def requested_bytes(total_bytes: int, fraction: float) -> int:
    """What ``--gpu-memory-utilization`` asks for: ceil(fraction × total), as vLLM computes it."""
    return math.ceil(total_bytes * fraction)


def free_memory_error(free_bytes: int, total_bytes: int, fraction: float) -> str | None:
    """vLLM's refusal when free memory (after its own context) is below the requested slice."""
    wanted = requested_bytes(total_bytes, fraction)
    if free_bytes >= wanted:
        return None
    return (
        f"ValueError: Free memory on device cuda:0 ({gib(free_bytes)}/{gib(total_bytes)} GiB) "
        f"on startup is less than desired GPU memory utilization ({fraction}, {gib(wanted)} GiB). "
        "Decrease GPU memory utilization or reduce GPU memory used by other processes."
    )


NO_CACHE_BLOCKS = (
    "ValueError: No available memory for the cache blocks. Try increasing "
    "`gpu_memory_utilization` when initializing the engine."
)


def profiling_error(initial_free_bytes: int, current_free_bytes: int) -> str:
    """vLLM's assertion when another process released memory while it was profiling."""
    return (
        "AssertionError: Error in memory profiling. Initial free memory "
        f"{gib(initial_free_bytes)} GiB, current free memory {gib(current_free_bytes)} GiB. "
        "This happens when other processes sharing the same container release GPU memory "
        "while vLLM is profiling during initialization. To fix this, ensure consistent GPU "
        "memory allocation or isolate vLLM in its own container."
    )


def cuda_oom_error(wanted_bytes: int, total_bytes: int, free_bytes: int, own_bytes: int) -> str:
    """PyTorch's CUDA out-of-memory message, as it ends a vLLM start or a running engine."""
    return (
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
        f"{wanted_bytes / MIB:.2f} MiB. GPU 0 has a total capacity of {gib(total_bytes)} GiB "
        f"of which {max(free_bytes, 0) / MIB:.2f} MiB is free. Including non-PyTorch memory, "
        f"this process has {gib(own_bytes)} GiB memory in use."
    )


def bf16_error(gpu_name: str, capability: str) -> str:
    return (
        "ValueError: Bfloat16 is only supported on GPUs with compute capability of at least "
        f"8.0. Your {gpu_name} GPU has compute capability {capability}. You can use float16 "
        "instead by explicitly setting the `dtype` flag in CLI, for example: --dtype=half."
    )


def quantization_mismatch_error(checkpoint: str | None, requested: str) -> str | None:
    """vLLM refuses a ``--quantization`` the checkpoint was not made for (``awq`` and
    ``awq_marlin`` are both fine for an AWQ checkpoint)."""
    compatible = {"awq": {"awq", "awq_marlin"}, "gptq": {"gptq", "gptq_marlin"}}
    ok = compatible.get(checkpoint or "", {checkpoint}) if checkpoint else set()
    if requested in ok:
        return None
    return (
        "ValueError: Quantization method specified in the model config "
        f"({checkpoint}) does not match the quantization method specified in the "
        f"`quantization` argument ({requested})."
    )


@dataclass(frozen=True)
class EngineMemory:
    """What one engine holds once started, and the figures it logs."""

    budget_bytes: int
    weights_bytes: int
    activation_bytes: int
    cuda_graph_bytes: int
    charged_to_others_bytes: int
    kv_cache_bytes: int
    kv_cache_tokens: int
    max_model_len: int
    max_concurrency: float

    @property
    def held_bytes(self) -> int:
        """Memory on the card besides the CUDA context. Normally the budget; less by what was
        charged to it for others' allocations (vLLM shrinks its KV cache by that much)."""
        return self.weights_bytes + self.activation_bytes + self.cuda_graph_bytes + self.kv_cache_bytes


class EngineStartError(Exception):
    """The engine cannot start; ``str()`` is vLLM's last error line."""


def size_engine(
    *,
    total_bytes: int,
    fraction: float,
    weights_bytes: int,
    kv_bytes_per_token: int,
    max_model_len: int,
    activation_bytes: int,
    cuda_graph_bytes: int,
    others_grew_bytes: int = 0,
    kv_cache_memory_bytes: int | None = None,
) -> EngineMemory:
    """The KV cache left in the budget, or ``EngineStartError`` with vLLM's message.

    ``others_grew_bytes``: how much other processes' usage grew while this one profiled.
    ``kv_cache_memory_bytes`` (``--kv-cache-memory-bytes``) fixes the KV size, skipping profiling.
    """
    budget = requested_bytes(total_bytes, fraction)
    charged = max(others_grew_bytes, 0)
    if kv_cache_memory_bytes is not None:
        kv = kv_cache_memory_bytes
        budget = max(budget, weights_bytes + activation_bytes + cuda_graph_bytes + kv)
    else:
        kv = budget - weights_bytes - activation_bytes - cuda_graph_bytes - charged
    if kv <= 0:
        raise EngineStartError(NO_CACHE_BLOCKS)
    tokens = kv // kv_bytes_per_token // BLOCK_SIZE_TOKENS * BLOCK_SIZE_TOKENS
    _check_one_request(tokens, max_model_len, kv_bytes_per_token, kv)
    return EngineMemory(
        budget_bytes=budget,
        weights_bytes=weights_bytes,
        activation_bytes=activation_bytes,
        cuda_graph_bytes=cuda_graph_bytes,
        charged_to_others_bytes=charged,
        kv_cache_bytes=kv,
        kv_cache_tokens=tokens,
        max_model_len=max_model_len,
        max_concurrency=tokens / max_model_len,
    )


def startup_log_lines(mem: EngineMemory, load_s: float) -> list[tuple[str, str]]:
    """(source file, message) pairs in vLLM's wording, in the order vLLM logs them."""
    lines = [
        ("gpu_model_runner.py", f"Model loading took {gib(mem.weights_bytes)} GiB memory and "
                                f"{load_s:.6f} seconds"),
        ("gpu_worker.py", f"Memory profiling takes {load_s / 4:.2f} seconds. Total non KV cache "
         f"memory: {gib(mem.budget_bytes - mem.kv_cache_bytes)}GiB; torch peak memory increase: "
         f"{gib(mem.activation_bytes)}GiB; non-torch forward increase memory: "
         f"{gib(mem.charged_to_others_bytes)}GiB; weights memory: {gib(mem.weights_bytes)}GiB."),
        ("gpu_worker.py", f"Available KV cache memory: {gib(mem.kv_cache_bytes)} GiB"),
        ("kv_cache_utils.py", f"GPU KV cache size: {mem.kv_cache_tokens:,} tokens"),
        ("kv_cache_utils.py", f"Maximum concurrency for {mem.max_model_len:,} tokens per "
                              f"request: {mem.max_concurrency:.2f}x"),
    ]  # fmt: skip
    if mem.cuda_graph_bytes:
        lines.append(
            ("gpu_model_runner.py", f"Graph capturing finished in 1 secs, took "
                                    f"{gib(mem.cuda_graph_bytes)} GiB")
        )  # fmt: skip
    return lines


# -- vLLM 0.34: the extensible KV cache ----------------------------------------------------------
#
# With the extensible KV cache (0.34's default on CUDA) ``--gpu-memory-utilization`` is a cap:
# there is no start-up refusal for too little free memory; the engine reserves address space
# for the capped KV cache, warms up, then commits as many blocks as the memory measured after
# warm-up allows, keeping the activation peak (and a margin) free. So an engine that starts
# beside a process that took memory meanwhile comes up with LESS KV cache than planned, instead
# of refusing. Sources: vllm/v1/worker/extensible_kv_cache.py ("Extended KV cache to %d blocks
# (%.2f GiB)."), and the "Memory after warmup" line of vllm/v1/worker/utils.py as recorded in
# shared/reference/README.md (its middle part is not verbatim there; gpumgr parses only the
# block count and the GiB figures).


def size_extensible(
    *,
    total_bytes: int,
    fraction: float,
    weights_bytes: int,
    kv_bytes_per_token: int,
    max_model_len: int,
    activation_bytes: int,
    cuda_graph_bytes: int,
    free_after_warmup_bytes: int,
    margin_bytes: int = 0,
) -> EngineMemory:
    """0.34's sizing: the KV cache the cap allows, cut to what is free after warm-up (less the
    activation peak and ``margin_bytes``); ``EngineStartError`` only when not one request fits."""
    budget = requested_bytes(total_bytes, fraction)
    cap_kv = budget - weights_bytes - activation_bytes - cuda_graph_bytes
    free_kv = free_after_warmup_bytes - activation_bytes - margin_bytes
    block_bytes = kv_bytes_per_token * BLOCK_SIZE_TOKENS
    kv = max(min(cap_kv, free_kv), 0) // block_bytes * block_bytes
    if kv <= 0:
        raise EngineStartError(NO_CACHE_BLOCKS)
    tokens = kv // kv_bytes_per_token
    _check_one_request(tokens, max_model_len, kv_bytes_per_token, kv)
    return EngineMemory(
        budget_bytes=weights_bytes + activation_bytes + cuda_graph_bytes + kv,
        weights_bytes=weights_bytes,
        activation_bytes=activation_bytes,
        cuda_graph_bytes=cuda_graph_bytes,
        charged_to_others_bytes=max(cap_kv - kv, 0),
        kv_cache_bytes=kv,
        kv_cache_tokens=tokens,
        max_model_len=max_model_len,
        max_concurrency=tokens / max_model_len,
    )


def capacity_tokens(
    total_bytes: int, fraction: float, weights_bytes: int, activation_bytes: int,
    cuda_graph_bytes: int, kv_bytes_per_token: int,
) -> int:
    """The KV capacity reserved before warm-up (address space, not memory): what the cap allows."""
    cap_kv = requested_bytes(total_bytes, fraction) - weights_bytes - activation_bytes - cuda_graph_bytes
    return max(cap_kv, 0) // kv_bytes_per_token // BLOCK_SIZE_TOKENS * BLOCK_SIZE_TOKENS


def extensible_log_lines(
    mem: EngineMemory, load_s: float, fraction: float, total_bytes: int, free_after_warmup_bytes: int,
    capacity: int,
) -> list[tuple[str, str]]:
    """0.34's start-up lines: the reservation ("GPU KV cache size" is the capacity here), then
    the memory measured after warm-up and the blocks really committed."""
    blocks = mem.kv_cache_tokens // BLOCK_SIZE_TOKENS
    requested = requested_bytes(total_bytes, fraction)
    lines = [
        ("gpu_model_runner.py", f"Model loading took {gib(mem.weights_bytes)} GiB memory and "
                                f"{load_s:.6f} seconds"),
        ("kv_cache_utils.py", f"GPU KV cache size: {capacity:,} tokens"),
        ("kv_cache_utils.py", f"Maximum concurrency for {mem.max_model_len:,} tokens per "
                              f"request: {capacity / mem.max_model_len:.2f}x"),
    ]  # fmt: skip
    if mem.cuda_graph_bytes:
        lines.append(("gpu_model_runner.py", f"Graph capturing finished in 1 secs, took "
                                             f"{gib(mem.cuda_graph_bytes)} GiB"))  # fmt: skip
    lines += [
        ("gpu_worker.py", f"Memory after warmup: {gib(free_after_warmup_bytes)} GiB free, "
         f"{gib(mem.kv_cache_bytes)} GiB committed to the KV cache, "
         f"{gib(mem.activation_bytes)} GiB reserved for activations; {blocks} KV cache blocks "
         f"({gib(mem.kv_cache_bytes)} GiB) fit within the requested {gib(requested)} GiB "
         f"(gpu_memory_utilization={fraction})."),
        ("extensible_kv_cache.py", f"Extended KV cache to {blocks} blocks "
                                   f"({gib(mem.kv_cache_bytes)} GiB)."),
    ]  # fmt: skip
    return lines


def _check_one_request(tokens: int, max_model_len: int, kv_bytes_per_token: int, kv: int) -> None:
    """vLLM's refusal when the KV cache cannot hold one request of ``max_model_len`` tokens."""
    if tokens < max_model_len:
        needed = max_model_len * kv_bytes_per_token
        raise EngineStartError(
            "ValueError: To serve at least one request with the models's max seq len "
            f"({max_model_len}), ({gib(needed)} GiB KV cache) is needed, which is larger than "
            f"the available KV cache memory ({gib(kv)} GiB). Based on the available memory, "
            f"the estimated maximum model length is {tokens}. Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
        )
