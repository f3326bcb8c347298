"""Reporting missed requests to gpumgr's demand policy, without ever delaying a pick.

When the filter drops a deployment whose backend is under ``policy: demand`` and not resident
(stopped, or asleep: its swap partner holds the place), the request still goes to the fallbacks
at once; the hook only adds one to a counter (``note``, no I/O). A background task sends the
counts to that daemon's ``POST /v1/demand`` at most once a second per name (the daemon ignores
more), with the control token when one is configured. Every failure is silent beyond one log
line per kind: the counts of a failed send are dropped, never retried in a pile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx2

log = logging.getLogger("gpumgr.integrations.litellm")

REPORT_INTERVAL_S = 1.0
MAX_PENDING = 10_000
"""One name's count is capped here between two sends (the daemon caps it too)."""
MAX_NAMES = 64
SEND_TIMEOUT_S = 1.0


def demand_url(status_url: str) -> str:
    """``…/v1/status`` → ``…/v1/demand`` (the same daemon)."""
    base = status_url.rstrip("/")
    if base.endswith("/status"):
        return base[: -len("/status")] + "/demand"
    return base + "/demand"


class DemandReporter:
    """Counts per daemon (index of its status URL) and backend name; sends them in the background."""

    def __init__(self, status_urls: tuple[str, ...], *, token: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.urls = tuple(demand_url(u) for u in status_urls)
        self._token = token
        self._clock = clock
        self._pending: list[dict[str, int]] = [{} for _ in self.urls]
        self._sent_at: list[dict[str, float]] = [{} for _ in self.urls]
        self._failing = False
        self.sent = 0
        """Reports the daemons accepted (for tests and logs)."""

    def note(self, host: int, name: str) -> None:
        """One request the router could not send to ``name`` of daemon ``host`` (no I/O)."""
        pending = self._pending[host]
        if name in pending or len(pending) < MAX_NAMES:
            pending[name] = min(MAX_PENDING, pending.get(name, 0) + 1)

    def due(self, host: int) -> dict[str, int]:
        """The counts of ``host`` that may be sent now (each name at most once a second); taken
        out of the pending ones."""
        now = self._clock()
        pending, sent_at = self._pending[host], self._sent_at[host]
        ready = {n: c for n, c in pending.items()
                 if now - sent_at.get(n, float("-inf")) >= REPORT_INTERVAL_S}
        for n in ready:
            del pending[n]
            sent_at[n] = now
        return ready

    async def send_due(self, client: httpx2.AsyncClient) -> None:
        for host, url in enumerate(self.urls):
            counts = self.due(host)
            if not counts:
                continue
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            try:
                r = await client.post(url, json={"counts": counts}, headers=headers,
                                      timeout=SEND_TIMEOUT_S)
                r.raise_for_status()
                self.sent += 1
                if self._failing:
                    log.info("gpumgr.demand.reporting url=%s", url)
                    self._failing = False
            except Exception as exc:  # noqa: BLE001 - a report is a hint: never an error
                if not self._failing:
                    log.warning("gpumgr.demand.unreported url=%s error=%s", url, type(exc).__name__)
                    self._failing = True

    async def run(self) -> None:
        """Send what is due, every ``REPORT_INTERVAL_S``, until cancelled."""
        async with httpx2.AsyncClient(trust_env=False) as client:
            while True:
                try:
                    await self.send_due(client)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - never end the loop
                    log.exception("gpumgr.demand.failed")
                await asyncio.sleep(REPORT_INTERVAL_S / 4)
