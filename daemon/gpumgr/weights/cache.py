"""gpumgr's view of the weights cache: where snapshots live, what is known complete, who may write.

The cache is huggingface_hub's own layout (``models--org--name/{blobs,snapshots,refs}``) so the
same directory works with ``HF_HUB_CACHE`` for anyone inspecting it. Next to it gpumgr keeps, per
repository, ``gpumgr/<commit>.json`` — the manifest of a snapshot it *verified* complete (files,
sizes, the patterns it was fetched with) — and ``gpumgr/refs/<revision>`` → commit. A snapshot
without a manifest is never handed to vLLM. One file lock per repository serialises every writer
(daemon and CLI alike); whoever holds it may treat leftover ``*.incomplete`` files as debris of a
killed download.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import filelock

from gpumgr.fsio import write_atomic

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
LOCKS_DIR = ".gpumgr-locks"
MANIFEST_DIR = "gpumgr"
MANIFEST_VERSION = 1


def hub_cache_dir(cache_dir: Path, *, simulate: bool = False) -> Path:
    """The hub cache under gpumgr's cache directory; simulated repos never mix with real ones
    (a header-only simulated "Qwen" must not satisfy a real vLLM start)."""
    return cache_dir / ("simulated-hub" if simulate else "hub")


def repo_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def storage_dir(hub_dir: Path, repo: str) -> Path:
    return hub_dir / repo_folder(repo)


def snapshot_dir(hub_dir: Path, repo: str, commit: str) -> Path:
    return storage_dir(hub_dir, repo) / "snapshots" / commit


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size_bytes: int
    etag: str | None  # sha256 (LFS) or git blob sha1; used by deep verification


@dataclass(frozen=True)
class Manifest:
    """A snapshot gpumgr verified complete."""

    repo: str
    revision: str
    commit: str
    allow_patterns: tuple[str, ...]
    files: tuple[ManifestFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION, "repo": self.repo, "revision": self.revision,
            "commit": self.commit, "allow_patterns": list(self.allow_patterns),
            "files": [{"path": f.path, "size_bytes": f.size_bytes, "etag": f.etag} for f in self.files],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            repo=str(data["repo"]), revision=str(data["revision"]), commit=str(data["commit"]),
            allow_patterns=tuple(str(p) for p in data["allow_patterns"]),
            files=tuple(ManifestFile(str(f["path"]), int(f["size_bytes"]), f.get("etag"))
                        for f in data["files"]),
        )


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"), mode=0o600)


def _ref_path(hub_dir: Path, repo: str, revision: str) -> Path:
    return storage_dir(hub_dir, repo) / MANIFEST_DIR / "refs" / quote(revision, safe="")


def _manifest_path(hub_dir: Path, repo: str, commit: str) -> Path:
    return storage_dir(hub_dir, repo) / MANIFEST_DIR / f"{commit}.json"


def write_manifest(hub_dir: Path, manifest: Manifest) -> None:
    """Record a verified snapshot, then point its revision at it (in that order: a crash between
    the two leaves an unreferenced manifest, never a reference to nothing)."""
    _atomic_write(_manifest_path(hub_dir, manifest.repo, manifest.commit),
                  json.dumps(manifest.to_json(), indent=1) + "\n")
    if manifest.revision != manifest.commit:
        _atomic_write(_ref_path(hub_dir, manifest.repo, manifest.revision), manifest.commit + "\n")
        # huggingface_hub's own ref too, so `HF_HUB_OFFLINE=1` tools that name the repo find it
        hf_ref = storage_dir(hub_dir, manifest.repo) / "refs" / manifest.revision
        if ".." not in Path(manifest.revision).parts:
            _atomic_write(hf_ref, manifest.commit)


def resolve_local_commit(hub_dir: Path, repo: str, revision: str) -> str | None:
    """The commit a revision last resolved to here (a commit id resolves to itself)."""
    if COMMIT_RE.match(revision):
        return revision
    try:
        commit = _ref_path(hub_dir, repo, revision).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return commit if COMMIT_RE.match(commit) else None


def read_manifest(hub_dir: Path, repo: str, commit: str) -> Manifest | None:
    try:
        data = json.loads(_manifest_path(hub_dir, repo, commit).read_text(encoding="utf-8"))
        manifest = Manifest.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if manifest.repo == repo and manifest.commit == commit else None


def drop_manifest(hub_dir: Path, repo: str, commit: str) -> None:
    _manifest_path(hub_dir, repo, commit).unlink(missing_ok=True)


def repo_lock(hub_dir: Path, repo: str) -> filelock.FileLock:
    """The per-repository download lock (blocking; pass ``timeout`` to ``acquire``)."""
    path = hub_dir / LOCKS_DIR / f"{repo_folder(repo)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(path))


def remove_stale_incomplete(hub_dir: Path, repo: str) -> tuple[int, int]:
    """Delete ``*.incomplete`` debris of killed downloads; returns (files, bytes).

    Only call while holding ``repo_lock``: then no live gpumgr process is writing them.
    (huggingface_hub 2.x names partial files per process, so they can never be resumed.)
    """
    blobs = storage_dir(hub_dir, repo) / "blobs"
    count = size = 0
    if blobs.is_dir():
        for p in blobs.glob("*.incomplete"):
            try:
                size += p.stat().st_size
                p.unlink()
                count += 1
            except FileNotFoundError:
                continue
    return count, size


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free
