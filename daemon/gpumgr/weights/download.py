"""Get a provider's weights onto the disk, verified, and say where they are.

``resolve_snapshot`` is what the daemon calls before launching vLLM (and ``gpumgr pull`` runs):
a complete, verified local snapshot is returned without any HTTP; otherwise, under the
repository's file lock, it cleans debris of killed downloads, preflights, runs the real
``snapshot_download`` (which resumes a cut connection with ``Range``), verifies sizes and the
content hashes of what it fetched, and records the manifest that makes the snapshot "complete".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from gpumgr.config.registry import Provider
from gpumgr.errors import WeightsError
from gpumgr.weights.cache import (
    Manifest,
    disk_free_bytes,
    drop_manifest,
    read_manifest,
    remove_stale_incomplete,
    repo_lock,
    resolve_local_commit,
    snapshot_dir,
    write_manifest,
)
from gpumgr.weights.credentials import HubAccess
from gpumgr.weights.hubclient import HUB_ERRORS, download, translate
from gpumgr.weights.preflight import FreeBytesFn, PullPlan, WeightsSpec, preflight
from gpumgr.weights.progress import (
    PHASE_DONE,
    PHASE_VERIFYING,
    PHASE_WAITING,
    DownloadProgress,
    ProgressCallback,
    ProgressMeter,
    tqdm_adapter,
)
from gpumgr.weights.verify import verify_snapshot

log = structlog.get_logger(__name__)

DEFAULT_MARGIN_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Snapshot:
    """A complete local snapshot: the path vLLM is launched on, and the commit to show in status."""

    path: Path
    repo: str
    revision: str
    commit: str
    files: tuple[str, ...]
    total_bytes: int
    downloaded_bytes: int = 0


def _snapshot(hub_dir: Path, m: Manifest, downloaded_bytes: int = 0) -> Snapshot:
    return Snapshot(snapshot_dir(hub_dir, m.repo, m.commit), m.repo, m.revision, m.commit,
                    tuple(f.path for f in m.files), m.total_bytes, downloaded_bytes)


def local_snapshot(provider: Provider | WeightsSpec, hub_dir: Path) -> Snapshot | None:
    """The complete snapshot already on disk for the provider's revision, or None. No network."""
    spec = WeightsSpec.of(provider)
    commit = resolve_local_commit(hub_dir, spec.repo, spec.revision)
    if commit is None:
        return None
    manifest = read_manifest(hub_dir, spec.repo, commit)
    if manifest is None or set(manifest.allow_patterns) != set(spec.allow_patterns):
        return None
    problems = verify_snapshot(snapshot_dir(hub_dir, spec.repo, commit), manifest.files)
    if problems:
        log.warning("weights.snapshot_damaged", repo=spec.repo, commit=commit, problems=problems[:5])
        return None
    return _snapshot(hub_dir, manifest)


def plan_pull(
    provider: Provider | WeightsSpec, access: HubAccess, hub_dir: Path, *,
    free_bytes: FreeBytesFn = disk_free_bytes, margin_bytes: int = DEFAULT_MARGIN_BYTES,
) -> PullPlan:
    """The dry run: what a pull would fetch and whether it may start. Writes nothing."""
    spec = WeightsSpec.of(provider)
    try:
        return preflight(spec, access, hub_dir, free_bytes=free_bytes, margin_bytes=margin_bytes)
    except HUB_ERRORS as exc:
        raise translate(exc, spec.repo, spec.revision, access) from None


def resolve_snapshot(
    provider: Provider | WeightsSpec, access: HubAccess, hub_dir: Path, *,
    offline: bool = False, refresh: bool = False, progress: ProgressCallback | None = None,
    free_bytes: FreeBytesFn = disk_free_bytes, margin_bytes: int = DEFAULT_MARGIN_BYTES,
    lock_timeout_s: float | None = None,
) -> Snapshot:
    """A verified local snapshot for the provider, downloading what is missing.

    ``refresh`` asks the hub what the revision points to now even when a complete snapshot of an
    earlier commit exists; ``offline`` never opens a connection. ``hub_dir`` is
    ``cache.hub_cache_dir(paths.cache_dir, simulate=...)``.
    """
    spec = WeightsSpec.of(provider)
    refresh = refresh and not offline  # offline, the local snapshot is the only truth there is
    if not refresh and (snap := local_snapshot(spec, hub_dir)) is not None:
        log.info("weights.cached", repo=spec.repo, commit=snap.commit, bytes=snap.total_bytes)
        return snap
    if offline:
        raise WeightsError(
            f"{spec.repo}: no complete snapshot of {spec.revision!r} in {hub_dir} and hub access is "
            f"off (HF_HUB_OFFLINE): run 'gpumgr pull {spec.provider or spec.repo}' with network access"
        )
    lock = repo_lock(hub_dir, spec.repo)
    try:
        lock.acquire(timeout=0)
    except TimeoutError:
        log.info("weights.lock_wait", repo=spec.repo, lock=lock.lock_file)
        if progress:
            progress(DownloadProgress(spec.repo, PHASE_WAITING, 0, 0))
        try:
            lock.acquire(timeout=-1 if lock_timeout_s is None else lock_timeout_s)
        except TimeoutError:
            raise WeightsError(f"{spec.repo}: another download of this repository still runs "
                               f"(lock {lock.lock_file})") from None
    try:
        if not refresh and (snap := local_snapshot(spec, hub_dir)) is not None:
            log.info("weights.cached", repo=spec.repo, commit=snap.commit, waited=True)
            return snap
        return _download_locked(spec, access, hub_dir, progress, free_bytes, margin_bytes)
    finally:
        lock.release()


def _download_locked(
    spec: WeightsSpec, access: HubAccess, hub_dir: Path, progress: ProgressCallback | None,
    free_bytes: FreeBytesFn, margin_bytes: int,
) -> Snapshot:
    files, size = remove_stale_incomplete(hub_dir, spec.repo)
    if files:
        log.info("weights.stale_incomplete_removed", repo=spec.repo, files=files, bytes=size)
    started = time.monotonic()
    try:
        plan = preflight(spec, access, hub_dir, free_bytes=free_bytes, margin_bytes=margin_bytes)
        log.info("weights.download", repo=spec.repo, revision=spec.revision, commit=plan.commit,
                 files=len(plan.files), bytes=plan.needed_bytes, endpoint=access.endpoint,
                 token_source=access.token.source if access.token else None)
        meter = ProgressMeter(spec.repo, plan.needed_bytes, progress)
        path = download(spec.repo, plan.commit, hub_dir, list(spec.allow_patterns), access,
                        tqdm_adapter(meter))
    except HUB_ERRORS as exc:
        err = translate(exc, spec.repo, spec.revision, access)
        log.info("weights.download_failed", repo=spec.repo, error=str(err))
        raise err from None
    finally:
        remove_stale_incomplete(hub_dir, spec.repo)
    meter.phase(PHASE_VERIFYING)
    manifest = Manifest(spec.repo, spec.revision, plan.commit, spec.allow_patterns,
                        tuple(f.manifest() for f in plan.files))
    fetched = {f.path for f in plan.files if not f.cached}
    problems = verify_snapshot(path, manifest.files, hash_paths=fetched)
    if problems:
        drop_manifest(hub_dir, spec.repo, plan.commit)
        _discard(path, problems)
        raise WeightsError(f"{spec.repo}: downloaded snapshot failed verification ({problems[0]}); "
                           "the damaged files were removed, pull again")
    write_manifest(hub_dir, manifest)
    meter.phase(PHASE_DONE)
    log.info("weights.ready", repo=spec.repo, commit=plan.commit, path=str(path),
             bytes=manifest.total_bytes, downloaded_bytes=meter.done_bytes,
             elapsed_s=round(time.monotonic() - started, 3))
    return _snapshot(hub_dir, manifest, downloaded_bytes=meter.done_bytes)


def _discard(snapshot: Path, problems: list[str]) -> None:
    """Remove the files named in ``problems`` (and their blobs) so the next pull re-fetches them."""
    for problem in problems:
        rel = problem.split(":", 1)[0]
        link = snapshot.joinpath(*rel.split("/"))
        try:
            blob = link.resolve()
            link.unlink(missing_ok=True)
            if blob != link:
                blob.unlink(missing_ok=True)
        except OSError:
            continue
