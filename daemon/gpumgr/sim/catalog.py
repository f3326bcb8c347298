"""The synthetic Hugging Face repositories the simulated hub serves.

Each example model is described by one JSON file in ``gpumgr/sim/models/``: its published
``config.json`` (real dimensions, AWQ ``quantization_config``), generation and tokenizer
configs, and its safetensors shards as *declared* sizes. Materialising a repository writes
header-only safetensors (``gpumgr.modelfiles.header_only_safetensors``), so a few kilobytes on
disk carry the real model's weight size through the same code path a real checkpoint takes.

The hub reads plain directories (``ROOT/<org>/<name>/...``); ``write_repo`` lets tests add
repositories of their own (a non-AWQ model, a large plain file for resume tests).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gpumgr.modelfiles import header_only_safetensors

CATALOG_PACKAGE = "gpumgr.sim"
CATALOG_DIR = "models"


@dataclass(frozen=True)
class SimShard:
    name: str
    data_bytes: int


@dataclass(frozen=True)
class SimRepoSpec:
    """One synthetic repository, as described by its catalog JSON."""

    repo_id: str
    config: dict[str, Any]
    generation_config: dict[str, Any]
    tokenizer_config: dict[str, Any]
    tokenizer_files: tuple[str, ...]
    safetensors: tuple[SimShard, ...]
    extra_files: dict[str, str]

    @property
    def weights_bytes(self) -> int:
        """The real model's tensor bytes (what the planner will see)."""
        return sum(s.data_bytes for s in self.safetensors)

    def files(self) -> dict[str, bytes]:
        """Every file of the repository, by repository path."""
        out: dict[str, bytes] = {
            "config.json": _json(self.config),
            "generation_config.json": _json(self.generation_config),
            "tokenizer_config.json": _json(self.tokenizer_config),
        }
        for name in self.tokenizer_files:
            out[name] = _tokenizer_file(name, self.repo_id)
        for shard in self.safetensors:
            out[shard.name] = header_only_safetensors(
                shard.data_bytes, tensor_name=f"{shard.name.removesuffix('.safetensors')}.weights"
            )
        if len(self.safetensors) > 1:
            index = {
                "metadata": {"total_size": self.weights_bytes},
                "weight_map": {
                    f"{s.name.removesuffix('.safetensors')}.weights": s.name for s in self.safetensors
                },
            }
            out["model.safetensors.index.json"] = _json(index)
        for name, text in self.extra_files.items():
            out[name] = text.encode()
        return out


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def _tokenizer_file(name: str, repo_id: str) -> bytes:
    """Small stand-ins for tokenizer files: right names and formats, a token vocabulary."""
    vocab = {tok: i for i, tok in enumerate(["<s>", "</s>", "<unk>", "def", "return", "Ġ", "ĠĠ"])}
    if name == "tokenizer.json":
        return _json({"version": "1.0", "truncation": None, "padding": None,
                      "model": {"type": "BPE", "vocab": vocab, "merges": ["Ġ Ġ"]},
                      "gpumgr_simulated": repo_id})
    if name == "vocab.json":
        return _json(vocab)
    if name == "merges.txt":
        return b"#version: 0.2\n\xc4\xa0 \xc4\xa0\n"
    if name == "special_tokens_map.json":
        return _json({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    if name == "added_tokens.json":
        return _json({"<|im_end|>": 32000, "<|im_start|>": 32001})
    if name == "tokenizer.model":
        return b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02" + repo_id.encode()
    return f"simulated {name} of {repo_id}\n".encode()


def _spec(data: Mapping[str, Any]) -> SimRepoSpec:
    return SimRepoSpec(
        repo_id=str(data["repo_id"]),
        config=dict(data["config"]),
        generation_config=dict(data.get("generation_config", {})),
        tokenizer_config=dict(data.get("tokenizer_config", {})),
        tokenizer_files=tuple(data.get("tokenizer_files", ())),
        safetensors=tuple(SimShard(str(s["name"]), int(s["data_bytes"])) for s in data["safetensors"]),
        extra_files={str(k): str(v) for k, v in data.get("extra_files", {}).items()},
    )


def load_catalog() -> dict[str, SimRepoSpec]:
    """Every synthetic repository shipped with gpumgr, by repo id."""
    out: dict[str, SimRepoSpec] = {}
    for entry in resources.files(CATALOG_PACKAGE).joinpath(CATALOG_DIR).iterdir():
        if entry.name.endswith(".json"):
            spec = _spec(json.loads(entry.read_text(encoding="utf-8")))
            out[spec.repo_id] = spec
    return out


def write_repo(root: Path, repo_id: str, files: Mapping[str, bytes]) -> Path:
    """Write one repository (``root/<org>/<name>/<path>``) for the hub to serve; returns its dir."""
    repo_dir = root.joinpath(*repo_id.split("/"))
    for rel, data in files.items():
        target = repo_dir.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return repo_dir


def materialise_catalog(root: Path, repo_ids: Iterable[str] | None = None) -> Path:
    """Write the catalog's repositories (all, or the ones named) under ``root``; returns ``root``."""
    catalog = load_catalog()
    wanted = list(catalog) if repo_ids is None else list(repo_ids)
    for repo_id in wanted:
        if repo_id not in catalog:
            raise KeyError(f"{repo_id} is not in the simulated catalog ({', '.join(sorted(catalog))})")
        write_repo(root, repo_id, catalog[repo_id].files())
    return root
