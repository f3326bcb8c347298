"""Before any large byte moves: what a pull would fetch, whether it is the model asked for, and
whether it fits on the disk.

The decisions (patterns, AWQ check, disk arithmetic) are pure functions; ``preflight`` gathers
their inputs from the hub (revision → commit, file listing, ``config.json``) and the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# documented public helper; the package's __init__ re-exports it without `as`, hence the ignore
from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

from gpumgr.config.registry import Provider
from gpumgr.errors import WeightsInputError
from gpumgr.weights.cache import ManifestFile, snapshot_dir
from gpumgr.weights.credentials import HubAccess
from gpumgr.weights.hubclient import fetch_json, fetch_listing
from gpumgr.weights.progress import format_bytes

BASE_PATTERNS = ("*.safetensors", "*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja")
"""What vLLM reads from a checkpoint: weights, configs, tokenizer files, chat templates."""
REMOTE_CODE_PATTERNS = ("*.py",)
AWQ_METHODS = ("awq", "awq_marlin")

FreeBytesFn = Callable[[Path], int]


@dataclass(frozen=True)
class WeightsSpec:
    """What a provider needs from the hub (the part of ``Provider`` this package acts on)."""

    provider: str
    repo: str
    revision: str
    quantization: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def of(cls, provider: Provider | WeightsSpec) -> WeightsSpec:
        if isinstance(provider, WeightsSpec):
            return provider
        repo = provider.hf_repo
        if not provider.is_vllm or repo is None:
            raise WeightsInputError(
                f"provider {provider.name or '?'} has no Hugging Face repository to pull "
                "(set hf_repo, or name its model 'org/repo')"
            )
        return cls(provider=provider.name, repo=repo, revision=provider.hf_revision or "main",
                   quantization=provider.effective_quantization,
                   trust_remote_code=provider.trust_remote_code)

    @property
    def allow_patterns(self) -> tuple[str, ...]:
        return allow_patterns(self.trust_remote_code)


def allow_patterns(trust_remote_code: bool) -> tuple[str, ...]:
    """Python files only when the provider runs the repository's own code."""
    return BASE_PATTERNS + (REMOTE_CODE_PATTERNS if trust_remote_code else ())


def select_files(files: Iterable[ManifestFile], patterns: Iterable[str]) -> tuple[ManifestFile, ...]:
    by_path = {f.path: f for f in files}
    chosen = filter_repo_objects(items=list(by_path), allow_patterns=list(patterns))
    return tuple(by_path[p] for p in sorted(chosen))


def wants_awq(quantization: str | None) -> bool:
    return quantization is not None and quantization.strip().lower() in AWQ_METHODS


def check_quantization(spec: WeightsSpec, config: dict[str, Any]) -> str | None:
    """The repository's quantization method; an error when AWQ was asked for and this is not AWQ
    (an fp16 checkpoint is ~4x larger and would not fit the plan)."""
    qc = config.get("quantization_config")
    method = str(qc.get("quant_method", "")).lower() if isinstance(qc, dict) else None
    if wants_awq(spec.quantization) and method not in AWQ_METHODS:
        found = f"quant_method {method!r}" if method else "no quantization_config"
        raise WeightsInputError(
            f"{spec.repo}: provider {spec.provider} asks for quantization {spec.quantization}, but the "
            f"repository's config.json has {found} (not an AWQ checkpoint)"
        )
    return method


def check_disk(spec: WeightsSpec, needed_bytes: int, free_bytes: int, margin_bytes: int, where: Path) -> None:
    if needed_bytes and needed_bytes + margin_bytes > free_bytes:
        raise WeightsInputError(
            f"{spec.repo}: needs {format_bytes(needed_bytes)} (+{format_bytes(margin_bytes)} margin) "
            f"in {where}, only {format_bytes(free_bytes)} free"
        )


@dataclass(frozen=True)
class PlannedFile:
    path: str
    size_bytes: int
    etag: str | None
    cached: bool

    def manifest(self) -> ManifestFile:
        return ManifestFile(self.path, self.size_bytes, self.etag)


@dataclass(frozen=True)
class PullPlan:
    """What one pull would do. ``needed_bytes`` excludes files already complete in the cache."""

    spec: WeightsSpec
    commit: str
    files: tuple[PlannedFile, ...]
    free_bytes: int
    margin_bytes: int
    quant_method: str | None
    model_config: dict[str, Any] | None = None
    """The checkpoint's ``config.json`` (its dimensions plan the KV cache before the weights
    are here)."""

    @property
    def weights_bytes(self) -> int:
        """The safetensors files' total: the weights' size on the card, before download."""
        return sum(f.size_bytes for f in self.files if f.path.endswith(".safetensors"))

    @property
    def total_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    @property
    def needed_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files if not f.cached)


def _cached(snapshot: Path, f: ManifestFile) -> bool:
    try:
        return snapshot.joinpath(*f.path.split("/")).stat().st_size == f.size_bytes
    except FileNotFoundError:
        return False


def preflight(
    spec: WeightsSpec, access: HubAccess, hub_dir: Path, *, free_bytes: FreeBytesFn,
    margin_bytes: int,
) -> PullPlan:
    """Ask the hub what the pull means; raise ``WeightsInputError`` if it must not start.

    Hub errors propagate as huggingface_hub's types; callers translate them.
    """
    listing = fetch_listing(spec.repo, spec.revision, access)
    files = select_files(listing.files, spec.allow_patterns)
    if not any(f.path == "config.json" for f in files):
        raise WeightsInputError(f"{spec.repo}: no config.json at {spec.revision!r}: not a model vLLM can load")
    if not any(f.path.endswith(".safetensors") for f in files):
        raise WeightsInputError(f"{spec.repo}: no *.safetensors weights at {spec.revision!r}")
    config = fetch_json(spec.repo, listing.commit, "config.json", access)
    method = check_quantization(spec, config)
    snap = snapshot_dir(hub_dir, spec.repo, listing.commit)
    planned = tuple(PlannedFile(f.path, f.size_bytes, f.etag, _cached(snap, f)) for f in files)
    plan = PullPlan(spec, listing.commit, planned, free_bytes(hub_dir), margin_bytes, method,
                    config if isinstance(config, dict) else None)
    check_disk(spec, plan.needed_bytes, plan.free_bytes, margin_bytes, hub_dir)
    return plan
