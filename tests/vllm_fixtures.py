"""What the vLLM command tests share: a reference provider and vLLM 0.33.0's own flag list."""

from __future__ import annotations

import csv

from conftest import reference_dir

from gpumgr.config.registry import Provider

UUID = "GPU-5105e000-0000-4000-8000-000000000000"


def vllm_provider(*, aliases: list[str] | None = None, **kw: object) -> Provider:
    """``qwen-7b``: Qwen2.5-Coder 7B AWQ on port 8001, 8192 tokens, 16 sequences; ``kw``
    replaces top-level keys, ``aliases`` are given to its one model."""
    model: dict[str, object] = {"name": "qwen-coder-vllm",
                                "hf_repo": "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
                                "quantization": "AWQ"}  # fmt: skip
    if aliases is not None:
        model["aliases"] = aliases
    base: dict[str, object] = {
        "name": "qwen-7b",
        "type": "vllm",
        "base_url": "http://127.0.0.1:8001",
        "max_model_len": 8192,
        "max_num_seqs": 16,
        "models": [model],
    }
    base.update(kw)
    return Provider.model_validate(base)


def reference_flags() -> dict[str, str]:
    """flag -> takes_value ('yes', 'no', 'optional') from ``vllm-0.33.0-serve-flags.tsv``."""
    path = reference_dir() / "vllm-0.33.0-serve-flags.tsv"
    with open(path, newline="", encoding="utf-8") as f:
        return {row["flag"]: row["takes_value"] for row in csv.DictReader(f, delimiter="\t")}
