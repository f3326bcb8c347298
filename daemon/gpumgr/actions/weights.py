"""Each managed backend's weights, as the manager's starts need them: the local snapshot (found
or fetched now, with progress as ``downloading`` events) and, while a download is still coming,
the hub's planning facts (dimensions and size) so that a start on the same card can plan with
it. Each backend fetches its own: nobody waits for another's download, only (bounded) for its
facts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection
from pathlib import Path

import structlog

from gpumgr.aio import run_in_daemon_thread
from gpumgr.config import Config
from gpumgr.config.registry import Provider
from gpumgr.modelfiles import model_dims, weights_bytes
from gpumgr.supervisor.events import Downloading, EventSink
from gpumgr.weights import DownloadProgress, Snapshot, WeightsContext

from .prepare import PlanFacts

log = structlog.get_logger(__name__)

FACTS_WAIT_S = 10.0
"""How long a start waits for the hub's planning facts of another backend on its card."""

HubEndpoint = Callable[[], contextlib.AbstractContextManager[str | None]]
"""Opens the hub to fetch from for the duration of a download: None for huggingface_hub's own
endpoint, or the URL of another (the simulated hub, from the composition root)."""
WeightsHook = Callable[[str, Snapshot], None]


def default_hub() -> contextlib.AbstractContextManager[str | None]:
    return contextlib.nullcontext(None)


class BackendWeights:
    def __init__(self, config: Callable[[], Config], sink: EventSink, hub: HubEndpoint,
                 on_ready: WeightsHook | None = None) -> None:
        self._config = config
        self._sink = sink
        self._hub = hub
        self._on_ready = on_ready
        self.snapshots: dict[str, Path] = {}
        self._facts: dict[str, PlanFacts] = {}
        self._known: dict[str, asyncio.Event] = {}
        """Set once a backend's planning facts are known (or cannot be)."""

    def expect(self, name: str) -> None:
        """``name``'s weights are about to be looked up: a start on its card waits for its
        facts (bounded) rather than planning without it."""
        if name not in self.snapshots:
            self._known.setdefault(name, asyncio.Event())

    def facts(self) -> dict[str, PlanFacts]:
        """Planning facts of the models whose weights are still coming."""
        return {n: f for n, f in self._facts.items() if n not in self.snapshots}

    def bytes_of(self, name: str) -> int | None:
        """The size of ``name``'s weights on disk (None when its snapshot is not known here)."""
        snap = self.snapshots.get(name)
        return weights_bytes(snap) if snap is not None else None

    async def await_facts(self, others: Collection[str]) -> None:
        """The planning facts of ``others`` (bounded by ``FACTS_WAIT_S``)."""
        waits = [ev.wait() for n, ev in self._known.items() if n in others and not ev.is_set()]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), FACTS_WAIT_S)

    async def ensure(self, provider: Provider) -> None:
        """The backend's snapshot, local or fetched now (in a daemon thread; progress becomes
        ``downloading`` events)."""
        loop = asyncio.get_running_loop()
        name = provider.name

        def say(detail: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while a download ran on
                loop.call_soon_threadsafe(self._sink, Downloading(name, detail))

        def progress(ev: DownloadProgress) -> None:
            say(ev.detail())

        known = self._known.setdefault(name, asyncio.Event())

        def facts(found: PlanFacts | None) -> None:
            def store() -> None:
                if found is not None:
                    self._facts[name] = found
                known.set()

            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(store)

        try:
            snap = await run_in_daemon_thread(self._resolve, provider, say, progress, facts)
        finally:
            known.set()  # known or not knowable: nobody waits any longer
        self.snapshots[name] = snap.path
        if self._on_ready is not None:
            self._on_ready(name, snap)
        log.info("weights.ready", backend=name, repo=snap.repo, commit=snap.commit)

    def _resolve(
        self,
        provider: Provider,
        say: Callable[[str], None],
        progress: Callable[[DownloadProgress], None],
        facts: Callable[[PlanFacts | None], None],
    ) -> Snapshot:
        config = self._config()
        local = WeightsContext.from_config(config).local(provider)  # no hub needed
        if local is not None:
            facts(None)
            return local
        with self._hub() as endpoint:
            weights = WeightsContext.from_config(config, endpoint=endpoint)
            say(f"fetching {provider.hf_repo}")
            facts(_plan_facts(weights, provider))
            return weights.resolve(provider, progress=progress)


def _plan_facts(weights: WeightsContext, provider: Provider) -> PlanFacts | None:
    """The hub's word on a model before its download: dimensions and weights' size (None when
    the hub cannot say; the download that follows reports why)."""
    try:
        plan = weights.plan(provider)
        if plan.model_config is None:
            return None
        return PlanFacts(model_dims(plan.model_config), weights.tensor_bytes(provider, plan.commit))
    except Exception as exc:  # noqa: BLE001 - only a planning hint: the download will say more
        log.info("weights.facts_unknown", backend=provider.name, error=type(exc).__name__)
        return None
