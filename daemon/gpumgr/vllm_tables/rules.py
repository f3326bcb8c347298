"""What a vLLM release cannot do on an older card, keyed on compute capability (pure).

Checked where the card is known: ``gpumgr doctor`` (NVML's compute capability) and every launch
(``gpumgr plan`` and the daemon's start), so a Turing card (7.5) gets a located error instead of
an engine that dies in its first forward pass.

- fp8 KV cache (``--kv-cache-dtype fp8*``) on cc < 8.9 with vLLM >= 0.24: the fallback Triton
  attention backend needs SM89+ (vllm#47549, reported on a Quadro RTX 8000; fix not merged).
- ``--quantization`` on cc < 8.0: fp8/fp4/mx kernels need Ada/Hopper/Blackwell (fp8 weight-only
  Marlin needs Ampere); the int4 weight-only kernels (AWQ, GPTQ and their Marlin forms, MoE
  WNA16) run on Turing (Marlin for sm_75: vllm#29901, in 0.14.0 on).
- vLLM >= 0.34 has only the V2 model runner; its Turing kernels ship but no public run on a cc
  7.5 card is known yet: a warning with the command that checks it on the card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gpumgr.vllm_tables.parser import ServeArgsError, parse_serve_args
from gpumgr.vllm_tables.releases import NEWEST_KNOWN, Release, dotted, table

Capability = tuple[int, int]
SM89: Capability = (8, 9)
SM80: Capability = (8, 0)
FP8_KV_ISSUE = "vllm#47549"

TURING_METHODS = frozenset({
    "awq", "auto_awq", "awq_marlin", "gptq", "auto_gptq", "gptq_marlin", "moe_wna16",
    "compressed-tensors", "int8_per_channel_weight_only",
})
"""Methods whose kernels run on cc 7.5 (weight-only int4/int8; compressed-tensors for its
wNa16 schemes)."""
_NEEDS_AMPERE_MARKERS = ("fp8", "fp4", "mxfp", "nvfp", "w4afp8", "modelopt", "fbgemm")
"""Method names of fp8/fp4/mx kernels: none runs below cc 8.0."""


@dataclass(frozen=True)
class CardFinding:
    """One thing the release cannot do on the card: an ``error`` stops the launch."""

    level: Literal["error", "warning"]
    message: str
    fix: str


def turing_methods(release: Release) -> list[str]:
    """The ``--quantization`` methods of ``release`` that run on cc 7.5, sorted."""
    return sorted(release.flags.quantization_methods & TURING_METHODS)


def _needs_ampere(method: str) -> bool:
    return any(marker in method for marker in _NEEDS_AMPERE_MARKERS)


def _kv_cache_dtype(extra_args: Sequence[str], release: Release) -> str | None:
    """``--kv-cache-dtype``'s value, read with the release's parser, else with the newest one
    (a flag of another release must not hide an fp8 KV cache; the flags check reports it)."""
    for flags in (release.flags, table(NEWEST_KNOWN)):
        try:
            return parse_serve_args(list(extra_args), flags).value("kv_cache_dtype")
        except ServeArgsError:
            continue
    return None


def card_findings(
    extra_args: Sequence[str], quantization: str | None, release: Release,
    capability: Capability, card: str = "the card",
) -> list[CardFinding]:
    """What ``release`` cannot do on a card of ``capability`` with these settings."""
    cc = f"{capability[0]}.{capability[1]}"
    out: list[CardFinding] = []
    kv_dtype = _kv_cache_dtype(extra_args, release)
    if kv_dtype and kv_dtype.startswith("fp8") and capability < SM89 and release.fp8_kv_needs_sm89:
        out.append(CardFinding(
            "error",
            f"--kv-cache-dtype {kv_dtype} fails on {card} (compute capability {cc}) with vLLM "
            f"{release.label}: from 0.24 the fallback Triton attention backend needs SM89+ "
            f"({FP8_KV_ISSUE}, not fixed)",
            "use --kv-cache-dtype auto (fp16 KV cache; plan for twice the KV memory)",
        ))  # fmt: skip
    method = (quantization or "").strip().lower()
    if method and capability < SM80 and _needs_ampere(method):
        out.append(CardFinding(
            "error",
            f"quantization {method!r} needs compute capability >= 8.0 (fp8/fp4 kernels); "
            f"{card} is {cc}",
            "use an AWQ or GPTQ checkpoint (on cc 7.5 vLLM "
            f"{release.label} runs: {', '.join(turing_methods(release))})",
        ))  # fmt: skip
    elif method and capability < SM80 and method not in TURING_METHODS:
        out.append(CardFinding(
            "warning",
            f"quantization {method!r} is not known to run on compute capability {cc}",
            f"prefer one of: {', '.join(turing_methods(release))}",
        ))  # fmt: skip
    if capability < SM80 and release.v2_runner_only:
        out.append(CardFinding(
            "warning",
            f"vLLM {release.label} has only the V2 model runner; no public run of it on a "
            f"compute capability {cc} card is known yet (from {dotted((0, 34, 0))})",
            "check on this card before relying on it: `vllm serve Qwen/Qwen2.5-0.5B-Instruct "
            "--dtype half --max-model-len 2048 --gpu-memory-utilization 0.5` then "
            "`curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' -d "
            "'{\"model\":\"Qwen/Qwen2.5-0.5B-Instruct\",\"prompt\":\"hi\",\"max_tokens\":8}'`; "
            "or pin the provider to 0.33 (vllm_version / its own vllm_bin)",
        ))  # fmt: skip
    return out
