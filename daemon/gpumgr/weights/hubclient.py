"""The one module that talks to huggingface_hub, and the translation of its errors into gpumgr's.

Every call names its endpoint and token explicitly; the library's telemetry and implicit token
lookup are switched off when this module is imported, and its progress bars are replaced by
``gpumgr.weights.progress``. Hub errors become ``WeightsInputError`` (exit 2: the request is
wrong — missing repo or revision, gated) or ``WeightsError`` (exit 1: network, hub outage),
each with one line that names the repository and never the token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import huggingface_hub
from huggingface_hub import (
    HfApi,
    constants,
    get_session,
    hf_hub_url,
    hf_raise_for_status,
    snapshot_download,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
# documented public helper; the package's __init__ re-exports it without `as`, hence the ignore
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

from gpumgr.errors import GpumgrError, WeightsError, WeightsInputError
from gpumgr.weights.cache import ManifestFile
from gpumgr.weights.credentials import TOKEN_HINT, HubAccess

constants.HF_HUB_DISABLE_TELEMETRY = True
constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = True
huggingface_hub.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # its retry warnings become our events


@dataclass(frozen=True)
class RemoteListing:
    commit: str
    files: tuple[ManifestFile, ...]


def fetch_listing(repo: str, revision: str, access: HubAccess) -> RemoteListing:
    """Resolve ``revision`` to a commit and list every file of the repository at it."""
    api = HfApi(endpoint=access.endpoint, token=access.token_arg)
    info = api.model_info(repo, revision=revision, timeout=access.timeout_s)
    if not info.sha:
        raise WeightsError(f"{repo}: the hub at {access.endpoint} returned no commit for {revision!r}")
    files = tuple(
        ManifestFile(
            path=f.path,
            size_bytes=int(f.lfs.size if f.lfs is not None else f.size),
            etag=f.lfs.sha256 if f.lfs is not None else f.blob_id,
        )
        for f in api.list_repo_tree(repo, recursive=True, revision=info.sha)
        if isinstance(f, RepoFile)
    )
    return RemoteListing(info.sha, files)


def fetch_json(repo: str, commit: str, filename: str, access: HubAccess) -> dict[str, Any]:
    """One small JSON file of the repository, read without touching the cache (preflight may be
    a dry run). Gated repositories fail here, before any large byte moves."""
    url = hf_hub_url(repo, filename, revision=commit, endpoint=access.endpoint)
    headers = build_hf_headers(token=access.token_arg)
    response = get_session().get(url, headers=headers, timeout=access.timeout_s, follow_redirects=True)
    hf_raise_for_status(response)
    try:
        data = json.loads(response.content)
    except ValueError:
        raise WeightsInputError(f"{repo}: {filename} is not valid JSON") from None
    if not isinstance(data, dict):
        raise WeightsInputError(f"{repo}: {filename} is not a JSON object")
    return data


def download(
    repo: str, commit: str, hub_dir: Path, patterns: list[str], access: HubAccess,
    tqdm_class: type[Any] | None,
) -> Path:
    """The real ``snapshot_download`` at a fixed commit (so it skips re-resolving the revision)."""
    path = snapshot_download(
        repo, revision=commit, cache_dir=hub_dir, endpoint=access.endpoint,
        token=access.token_arg, allow_patterns=patterns, max_workers=access.max_workers,
        etag_timeout=access.timeout_s, tqdm_class=tqdm_class,
    )
    return Path(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def translate(exc: BaseException, repo: str, revision: str, access: HubAccess) -> GpumgrError:
    """The gpumgr error for a hub failure (call inside ``except``; re-raise the result ``from None``)."""
    where = access.endpoint
    if isinstance(exc, GpumgrError):
        return exc
    if isinstance(exc, GatedRepoError):
        if access.token is None:
            return WeightsInputError(f"{repo} is a gated repository on {where}: {TOKEN_HINT} "
                                     "to a token that has been granted access")
        return WeightsInputError(f"{repo} is a gated repository and the {access.token} has no "
                                 f"access to it: request access on its page at {where}/{repo}")
    if isinstance(exc, RevisionNotFoundError):
        return WeightsInputError(f"{repo}: revision {revision!r} not found on {where}")
    if isinstance(exc, RepositoryNotFoundError):
        hint = "" if access.token else f"; if it is private, {TOKEN_HINT}"
        return WeightsInputError(f"{repo}: repository not found on {where}{hint}")
    if isinstance(exc, RemoteEntryNotFoundError):
        return WeightsError(f"{repo}: the hub listed a file it then could not serve ({_first_line(exc)})")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return WeightsError(f"{repo}: hub at {where} answered HTTP {status}")
    if isinstance(exc, (httpx2.HTTPError, LocalEntryNotFoundError)):
        return WeightsError(f"{repo}: cannot download from {where} ({type(exc).__name__}: "
                            f"{_first_line(exc)})")
    if isinstance(exc, OSError):
        return WeightsError(f"{repo}: download failed ({_first_line(exc)})")
    return WeightsError(f"{repo}: download failed ({type(exc).__name__}: {_first_line(exc)})")


HUB_ERRORS: tuple[type[BaseException], ...] = (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError)
"""What a hub call may raise that ``translate`` turns into a gpumgr error."""
