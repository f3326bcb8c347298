"""Model weights from the Hugging Face hub: preflight, download, verification, offline use.

The daemon calls ``resolve_snapshot`` before launching a vLLM provider and launches vLLM on
``Snapshot.path`` with ``HF_HUB_OFFLINE=1``; ``gpumgr pull`` runs the same function.
"""

from gpumgr.weights.cache import disk_free_bytes, hub_cache_dir
from gpumgr.weights.credentials import (
    HubAccess,
    hub_access,
    HubToken,
    offline_from_env,
    resolve_endpoint,
    resolve_token,
)
from gpumgr.weights.context import WeightsContext
from gpumgr.weights.download import Snapshot, local_snapshot, plan_pull, resolve_snapshot
from gpumgr.weights.preflight import PlannedFile, PullPlan, WeightsSpec
from gpumgr.weights.progress import DownloadProgress, ProgressCallback

__all__ = [
    "DownloadProgress", "HubAccess", "HubToken", "PlannedFile", "ProgressCallback", "PullPlan",
    "Snapshot", "WeightsContext", "WeightsSpec", "disk_free_bytes", "hub_access", "hub_cache_dir", "local_snapshot",
    "offline_from_env", "plan_pull", "resolve_endpoint", "resolve_snapshot", "resolve_token",
]
