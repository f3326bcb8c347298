"""Everything a weights call needs from the loaded configuration, resolved once.

The daemon builds one ``WeightsContext`` at start (and on reload) and calls ``resolve`` before
each vLLM launch; ``gpumgr pull`` builds the same one, so both agree on cache, endpoint, token,
offline mode and margins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gpumgr.config import Config, Provider
from gpumgr.weights.cache import disk_free_bytes, hub_cache_dir
from gpumgr.weights.credentials import HubAccess, hub_access, offline_from_env
from gpumgr.weights.download import Snapshot, local_snapshot, plan_pull, resolve_snapshot
from gpumgr.weights.preflight import FreeBytesFn, PullPlan, WeightsSpec
from gpumgr.weights.progress import ProgressCallback


@dataclass(frozen=True)
class WeightsContext:
    access: HubAccess
    hub_dir: Path
    offline: bool
    margin_bytes: int
    lock_timeout_s: float | None = None
    free_bytes: FreeBytesFn = disk_free_bytes

    @classmethod
    def from_config(
        cls, cfg: Config, *, endpoint: str | None = None, env: Mapping[str, str] | None = None
    ) -> WeightsContext:
        """``endpoint`` is the simulated hub's URL when ``cfg.simulate`` (see ``gpumgr.sim.hub.hub_endpoint``)."""
        env = os.environ if env is None else env
        hub = cfg.settings.hub
        return cls(
            access=hub_access(hub, env, endpoint=endpoint),
            hub_dir=hub_cache_dir(cfg.paths.cache_dir, simulate=cfg.simulate),
            offline=offline_from_env(env),
            margin_bytes=hub.disk_margin_mib * 1024 * 1024,
            lock_timeout_s=hub.lock_timeout_s,
        )

    def resolve(
        self, provider: Provider | WeightsSpec, *, progress: ProgressCallback | None = None,
        refresh: bool = False,
    ) -> Snapshot:
        """Blocking (runs downloads in threads): call it from a worker thread in the daemon."""
        return resolve_snapshot(
            provider, self.access, self.hub_dir, offline=self.offline, refresh=refresh,
            progress=progress, free_bytes=self.free_bytes, margin_bytes=self.margin_bytes,
            lock_timeout_s=self.lock_timeout_s,
        )

    def plan(self, provider: Provider | WeightsSpec) -> PullPlan:
        return plan_pull(provider, self.access, self.hub_dir, free_bytes=self.free_bytes,
                         margin_bytes=self.margin_bytes)

    def tensor_bytes(self, provider: Provider | WeightsSpec, commit: str) -> int:
        """The weights' size on the card before download: the tensors the safetensors headers
        declare, read from the hub with range requests (huggingface_hub's own reader)."""
        from huggingface_hub import HfApi

        spec = WeightsSpec.of(provider)
        meta = HfApi(endpoint=self.access.endpoint).get_safetensors_metadata(
            spec.repo, revision=commit, token=self.access.token_arg, timeout=self.access.timeout_s
        )
        return sum(t.data_offsets[1] - t.data_offsets[0]
                   for f in meta.files_metadata.values() for t in f.tensors.values())

    def local(self, provider: Provider | WeightsSpec) -> Snapshot | None:
        return local_snapshot(provider, self.hub_dir)
