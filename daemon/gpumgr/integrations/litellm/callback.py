"""``GpumgrStatusFilter``: the LiteLLM ``CustomLogger`` that hides backends gpumgr calls out.

LiteLLM calls ``async_filter_deployments`` on every pick (first try, retries, fallbacks), after its
cooldown filter. The hook does no I/O: it looks the deployments up in an index built from the
followers' latest documents (rebuilt only when a document changes) and returns the deployments
worth trying (``matching.choose``). When gpumgr's status empties the group it raises the one
error LiteLLM hands to the fallbacks without retrying (``failover``: a 503 with
``num_retries=0``); any surprise of its own returns the deployments unfiltered (logged once):
gpumgr never fails a user's request.

A daemon not heard from for ``max_age_s`` is stale: its backends are not filtered (fail open)
until it is heard from again; the change is logged once each way.

LiteLLM itself is optional at import time: without it the class is a plain object (tests, and
``gpumgr`` tools that never run inside the proxy); inside the proxy it is a real
``CustomLogger``, which is what the router checks for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gpumgr.integrations.litellm.failover import group_unavailable
from gpumgr.integrations.litellm.follower import StatusFollower
from gpumgr.integrations.litellm.matching import Located, StatusIndex, choose, verdict
from gpumgr.integrations.litellm.settings import FilterSettings

log = logging.getLogger("gpumgr.integrations.litellm")

if TYPE_CHECKING:
    _Base = object
else:
    try:
        from litellm.integrations.custom_logger import CustomLogger as _Base
    except ImportError:  # not inside a LiteLLM proxy
        _Base = object


class GpumgrStatusFilter(_Base):
    """Filters LiteLLM's deployments by gpumgr's live status (one instance per router)."""

    def __init__(
        self,
        settings: FilterSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        autostart: bool = True,
    ) -> None:
        if _Base is not object:
            super().__init__()
        self.settings = settings or FilterSettings()
        self._clock = clock
        self._autostart = autostart
        self.followers = [
            StatusFollower(url, on_change=self._rebuild, poll_s=self.settings.poll_s, clock=clock)
            for url in self.settings.status_urls
        ]
        self._index = StatusIndex([(f.url, None) for f in self.followers])
        self._stale: list[bool] = [False] * len(self.followers)
        self._tasks: list[asyncio.Task[None]] = []
        self._hook_failed = False
        if autostart:
            self._start_if_on_loop()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GpumgrStatusFilter:
        return cls(FilterSettings.from_env(os.environ if env is None else env))

    # -- background -------------------------------------------------------------------------
    def _start_if_on_loop(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # imported outside a loop: start on the first pick
        self.start()

    def start(self) -> None:
        """Start following every status URL on the running loop (idempotent)."""
        if self._tasks and not all(t.done() for t in self._tasks):
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(f.run(), name=f"gpumgr-status {f.url}") for f in self.followers
        ]

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _rebuild(self) -> None:
        self._index = StatusIndex([(f.url, f.status) for f in self.followers])

    # -- the hook ---------------------------------------------------------------------------
    def fresh(self, host: int) -> bool:
        """True when daemon ``host`` was heard from within ``max_age_s`` (logs each change)."""
        seen = self.followers[host].last_seen
        stale = seen is None or self._clock() - seen > self.settings.max_age_s
        if stale != self._stale[host]:
            self._stale[host] = stale
            url = self.followers[host].url
            if stale:
                log.warning(
                    "gpumgr.status.stale url=%s max_age_s=%g: filtering nothing for it",
                    url, self.settings.max_age_s,
                )
            else:
                log.info("gpumgr.status.fresh url=%s", url)
        return not stale

    def filter(self, deployments: list[Any]) -> list[Any]:
        """The deployments worth trying now (pure lookups; what the hook returns)."""
        return self._filter(deployments)[0]

    def _filter(self, deployments: list[Any]) -> tuple[list[Any], list[Located | None]]:
        """The deployments worth trying now, and where each given one sends (for the reason)."""
        index = self._index
        located = [index.locate(d) for d in deployments]
        verdicts = [
            verdict(loc, model, fresh=self.fresh, informed=index.informed)
            for loc, model in located
        ]
        return choose(deployments, verdicts), [loc for loc, _ in located]

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list[Any],
        messages: list[Any] | None,
        request_kwargs: dict[str, Any] | None = None,
        parent_otel_span: Any = None,
    ) -> list[Any]:
        try:
            if self._autostart and not self._tasks:
                self.start()
            kept, located = self._filter(healthy_deployments)
            emptied = bool(healthy_deployments) and not kept
            error = group_unavailable(model, located) if emptied else None
        except Exception:  # noqa: BLE001 - never fail a user's request for the filter's sake
            if not self._hook_failed:
                self._hook_failed = True
                log.exception("gpumgr.filter.failed model=%s: returning deployments unfiltered", model)
            return healthy_deployments
        if error is not None:
            # Every deployment is down by gpumgr's word: an error LiteLLM sends straight to the
            # fallbacks, instead of an empty list it retries with back-off (failover.py).
            raise error
        return kept
