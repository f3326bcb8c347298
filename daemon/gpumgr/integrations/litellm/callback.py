"""``GpumgrStatusFilter``: the LiteLLM ``CustomLogger`` that hides backends gpumgr calls out.

LiteLLM calls ``async_filter_deployments`` on every pick (first try, retries, fallbacks), after its
cooldown filter. The hook does no I/O: it looks the deployments up in an index built from the
followers' latest documents (rebuilt only when a document changes) and returns the deployments
worth trying (``matching.choose``). When gpumgr's status empties the group it raises the one
error LiteLLM hands to the fallbacks without retrying (``failover``: a 503 with
``num_retries=0``); any surprise of its own returns the deployments unfiltered (logged once):
gpumgr never fails a user's request.

Two additions for gpumgr's lifecycle policies (docs/policies.md), both off the pick's path:
a dropped deployment whose backend gpumgr may swap in on demand is counted (``demand_report``:
no I/O in the hook; a background task reports the counts at most once a second per name), and,
with ``GPUMGR_HOLD_S`` set, a request whose group's only local deployment is loading with
``eta_s`` within ``hold_s`` waits for it (at most ``hold_s``) instead of going to the fallbacks.

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

from gpumgr.integrations.litellm.demand_report import DemandReporter
from gpumgr.integrations.litellm.failover import group_unavailable
from gpumgr.integrations.litellm.follower import StatusFollower
from gpumgr.integrations.litellm.matching import Located, StatusIndex, Verdict, choose, verdict
from gpumgr.integrations.litellm.settings import FilterSettings

log = logging.getLogger("gpumgr.integrations.litellm")

if TYPE_CHECKING:
    _Base = object
else:
    try:
        from litellm.integrations.custom_logger import CustomLogger as _Base
    except ImportError:  # not inside a LiteLLM proxy
        _Base = object


HOLD_POLL_S = 0.05
"""How often a held request looks again at its loading deployment."""


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
        self.demand = (DemandReporter(self.settings.status_urls, token=self.settings.control_token,
                                      clock=clock) if self.settings.report_demand else None)
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
        if self.demand is not None:
            self._tasks.append(loop.create_task(self.demand.run(), name="gpumgr-demand"))

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
        kept, located, _ = self._judge(deployments)
        return kept, located

    def _judge(
        self, deployments: list[Any]
    ) -> tuple[list[Any], list[Located | None], list[Verdict]]:
        index = self._index
        located = [index.locate(d) for d in deployments]
        verdicts = [
            verdict(loc, model, fresh=self.fresh, informed=index.informed)
            for loc, model in located
        ]
        return choose(deployments, verdicts), [loc for loc, _ in located], verdicts

    def _note_misses(self, located: list[Located | None], verdicts: list[Verdict]) -> None:
        """Count, once per pick, each dropped backend gpumgr may swap in on demand."""
        if self.demand is None:
            return
        noted: set[tuple[int, str]] = set()
        for loc, v in zip(located, verdicts):
            if loc is not None and v is Verdict.OUT and loc.backend.swappable:
                key = (loc.host, loc.backend.name)
                if key not in noted:
                    noted.add(key)
                    self.demand.note(*key)

    def _holdable(self, deployments: list[Any], located: list[Located | None]) -> Any | None:
        """The group's only local deployment when it is loading and due within ``hold_s``."""
        hold_s = self.settings.hold_s
        local = [(d, loc) for d, loc in zip(deployments, located) if loc is not None]
        if hold_s <= 0 or len(local) != 1:
            return None
        d, loc = local[0]
        b = loc.backend
        if b.state == "starting" and b.eta_s is not None and b.eta_s <= hold_s:
            return d
        return None

    async def _hold(self, deployment: Any) -> list[Any]:
        """Wait (at most ``hold_s``) for ``deployment`` to become worth trying; [] if it does not."""
        deadline = self._clock() + self.settings.hold_s
        while self._clock() < deadline:
            await asyncio.sleep(HOLD_POLL_S)
            kept = self._filter([deployment])[0]
            if kept:
                return kept
        return []

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
            kept, located, verdicts = self._judge(healthy_deployments)
            self._note_misses(located, verdicts)
            emptied = bool(healthy_deployments) and not kept
            held = self._holdable(healthy_deployments, located) if emptied else None
            error = group_unavailable(model, located) if emptied else None
        except Exception:  # noqa: BLE001 - never fail a user's request for the filter's sake
            if not self._hook_failed:
                self._hook_failed = True
                log.exception("gpumgr.filter.failed model=%s: returning deployments unfiltered", model)
            return healthy_deployments
        if held is not None:
            try:
                kept = await self._hold(held)
            except Exception:  # noqa: BLE001 - a failed hold is a request sent to the fallbacks
                kept = []
            if kept:
                return kept
        if error is not None:
            # Every deployment is down by gpumgr's word: an error LiteLLM sends straight to the
            # fallbacks, instead of an empty list it retries with back-off (failover.py).
            raise error
        return kept
