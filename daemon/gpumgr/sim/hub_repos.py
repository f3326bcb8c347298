"""How a plain directory looks as a hub repository: files with sizes, hashes and LFS pointers,
a content-addressed commit id, and the tree listing the hub API returns.

The hub's conventions, reproduced: an LFS file's ETag and ``lfs.oid`` are its sha256, other
files' ETag is their git blob sha1, and the tree lists directories of a recursive listing too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".model", ".gguf")
LFS_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RepoFileInfo:
    """One file as the hub describes it."""

    size: int
    sha256: str
    git_sha1: str
    lfs: bool

    @property
    def etag(self) -> str:
        """The hub's ETag: the sha256 for LFS files, the git blob id for the others."""
        return self.sha256 if self.lfs else self.git_sha1

    def tree_entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": path, "size": self.size, "oid": self.git_sha1}
        if self.lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
            entry["oid"] = _git_blob_sha1(pointer.encode())
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(pointer)}
        return entry


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def describe_file(path: Path) -> RepoFileInfo:
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(usedforsecurity=False)
    size = path.stat().st_size
    sha1.update(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            sha256.update(chunk)
            sha1.update(chunk)
    lfs = path.name.endswith(LFS_SUFFIXES) or size >= LFS_MIN_BYTES
    return RepoFileInfo(size=size, sha256=sha256.hexdigest(), git_sha1=sha1.hexdigest(), lfs=lfs)


@dataclass(frozen=True)
class SimRepo:
    repo_id: str
    root: Path
    files: dict[str, RepoFileInfo]

    @property
    def commit(self) -> str:
        """A content-addressed commit id: changes whenever any file changes."""
        lines = "".join(f"{p}\0{f.sha256}\n" for p, f in sorted(self.files.items()))
        return hashlib.sha1(lines.encode(), usedforsecurity=False).hexdigest()


def tree_listing(repo: SimRepo, prefix: str, recursive: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    dirs: set[str] = set()
    base = f"{prefix}/" if prefix else ""
    for path, info in sorted(repo.files.items()):
        if not path.startswith(base):
            continue
        rel = path[len(base):]
        if "/" in rel:
            top = base + rel.split("/")[0]
            if top not in dirs:
                dirs.add(top)
                out.append({"type": "directory", "path": top,
                            "oid": hashlib.sha1(top.encode(), usedforsecurity=False).hexdigest()})
            if not recursive:
                continue
            # deeper directories of a recursive listing
            parts = rel.split("/")[:-1]
            for i in range(2, len(parts) + 1):
                d = base + "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    out.append({"type": "directory", "path": d,
                                "oid": hashlib.sha1(d.encode(), usedforsecurity=False).hexdigest()})
        out.append(info.tree_entry(path))
    return out
