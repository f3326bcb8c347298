"""Is a snapshot directory really what the hub listed? Sizes always, content hashes on request.

The size check is cheap (one ``stat`` per file) and runs before every hand-over to vLLM. The
hash check reads every byte, so it runs once, on the files a pull has just fetched: the hub's
ETag is the file's sha256 for LFS files and its git blob sha1 for the others.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable
from pathlib import Path

from gpumgr.weights.cache import ManifestFile

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_READ_BYTES = 4 * 1024 * 1024


def content_digest_matches(path: Path, etag: str) -> bool | None:
    """True/False when ``etag`` is a content hash we can check; None when it is not one."""
    if _SHA256.match(etag):
        h = hashlib.sha256()
    elif _SHA1.match(etag):
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\0" % path.stat().st_size)
    else:
        return None
    with open(path, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            h.update(chunk)
    return h.hexdigest() == etag


def verify_snapshot(
    snapshot: Path, files: Iterable[ManifestFile], *, hash_paths: Collection[str] = ()
) -> list[str]:
    """Problems found (empty when the snapshot is complete): missing files, wrong sizes, and for
    the paths in ``hash_paths``, contents that do not match their ETag."""
    problems: list[str] = []
    for f in files:
        p = snapshot.joinpath(*f.path.split("/"))
        try:
            size = p.stat().st_size  # follows the snapshot's symlink to its blob
        except FileNotFoundError:
            problems.append(f"{f.path}: missing")
            continue
        if size != f.size_bytes:
            problems.append(f"{f.path}: {size} bytes, expected {f.size_bytes}")
            continue
        if f.path in hash_paths and f.etag and content_digest_matches(p, f.etag) is False:
            problems.append(f"{f.path}: content does not match the hub's checksum")
    return problems
