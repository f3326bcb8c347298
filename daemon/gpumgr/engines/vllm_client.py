"""The HTTP calls gpumgr makes to one vLLM engine it runs: ``/health``, ``/metrics`` (the drain),
``/is_sleeping``, ``/sleep``, ``/wake_up`` and a 1-token check after a wake. One place, over one
``httpx2.AsyncClient`` that the daemon creates once and shares (engines are on loopback; the
client keeps their connections alive instead of opening one per call)."""

from __future__ import annotations

import httpx2

from gpumgr.errors import BackendUnavailable

from .vllm_probe import VllmLoad, parse_metrics


class EngineClient:
    def __init__(self, http: httpx2.AsyncClient, base_url: str, backend: str,
                 api_key: str | None = None, served_name: str | None = None) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self.backend = backend
        self._api_key = api_key
        self._served_name = served_name

    @property
    def health_url(self) -> str:
        return f"{self.base_url}/health"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    async def healthy(self, timeout_s: float) -> bool:
        """``/health`` answers 200 (False while it refuses connections or answers 503)."""
        try:
            r = await self._http.get(self.health_url, timeout=timeout_s)
        except httpx2.HTTPError:
            return False
        return r.status_code == 200

    async def load(self, timeout_s: float) -> VllmLoad | None:
        """The requests running, waiting and finished (``/metrics``); None when it does not say."""
        try:
            r = await self._http.get(f"{self.base_url}/metrics", timeout=timeout_s)
        except httpx2.HTTPError:
            return None
        return parse_metrics(r.text) if r.status_code == 200 else None

    async def is_sleeping(self) -> bool:
        """Whether the engine says it is asleep (False when it has no sleep endpoints)."""
        try:
            r = await self._http.get(f"{self.base_url}/is_sleeping", timeout=2.0)
            return r.status_code == 200 and bool(r.json().get("is_sleeping"))
        except (httpx2.HTTPError, ValueError, AttributeError):
            return False

    async def sleep(self, level: int, timeout_s: float) -> None:
        """``POST /sleep?level=N``; raises ``BackendUnavailable`` when the engine refuses."""
        try:
            r = await self._http.post(f"{self.base_url}/sleep", params={"level": level},
                                      headers=self._auth(), timeout=timeout_s)
        except httpx2.HTTPError as exc:
            raise BackendUnavailable(f"{self.backend}: sleep failed: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise BackendUnavailable(f"{self.backend}: sleep refused: HTTP {r.status_code} "
                                     f"{r.text[:200]}")

    async def wake(self, timeout_s: float) -> None:
        """``POST /wake_up``; raises ``BackendUnavailable`` when the engine refuses."""
        try:
            r = await self._http.post(f"{self.base_url}/wake_up", headers=self._auth(),
                                      timeout=timeout_s)
        except httpx2.HTTPError as exc:
            raise BackendUnavailable(f"{self.backend}: wake failed: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise BackendUnavailable(f"{self.backend}: wake refused: HTTP {r.status_code} "
                                     f"{r.text[:300]}")

    async def answers_one_token(self) -> None:
        """A 1-token completion (after a wake, before the router is told it is up); raises
        ``BackendUnavailable``. Nothing to check for an engine with no served name."""
        if not self._served_name:
            return
        try:
            r = await self._http.post(
                f"{self.base_url}/v1/completions", headers=self._auth(), timeout=30.0,
                json={"model": self._served_name, "prompt": "ok", "max_tokens": 1},
            )
        except httpx2.HTTPError as exc:
            raise BackendUnavailable(f"{self.backend}: woken but a 1-token request "
                                     f"failed: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise BackendUnavailable(f"{self.backend}: woken but a 1-token request got "
                                     f"HTTP {r.status_code}")
