"""Room on the GPU from Ollama: what it holds now, and unloading models before a vLLM start.

Ollama re-reads free memory before each load and evicts only its own models; it will squeeze a
model onto the CPU because vLLM holds the card, and it cannot know that a vLLM server is about
to start. gpumgr sees both, so before a start whose plan does not fit it may unload the Ollama
models the planner names (``ollama.eviction`` in gpumgr.yaml):

- ``never``: the plan fails with "unload Ollama model X" as its advice;
- ``unload_idle`` (default): unload the smallest set of models that closes the shortfall
  (Ollama reloads a model on its next request);
- ``unload_all``: unload every loaded model before every vLLM start.

Calls are synchronous: the planner runs in a worker thread, under the GPU's lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx2
import structlog

from gpumgr.config.registry import Provider, ProviderType
from gpumgr.engines.ollama import loaded_models
from gpumgr.plan import OllamaModel

log = structlog.get_logger(__name__)

OLLAMA_TIMEOUT_S = 2.0


class OllamaRoom:
    """The local Ollama servers of the registry (type ``ollama``, active or standby)."""

    def __init__(self, providers: Sequence[Provider], timeout_s: float = OLLAMA_TIMEOUT_S) -> None:
        self.base_urls = [
            p.base_url.rstrip("/")
            for p in providers
            if p.type is ProviderType.OLLAMA and p.runs_here and p.base_url
        ]
        self.timeout_s = timeout_s
        self.pinned = frozenset(
            n for p in providers
            if p.type is ProviderType.OLLAMA and p.runs_here and p.pinned for n in p.served_names
        )
        """Models of pinned Ollama providers: never unloaded (``OllamaModel.pinned``)."""
        self._where: dict[str, str] = {}
        """Model name → the server that has it loaded (from the last ``loaded()``)."""

    def loaded(self) -> list[OllamaModel] | None:
        """Every loaded model with its ``size_vram``; None when no Ollama answers."""
        found: list[OllamaModel] | None = None
        where: dict[str, str] = {}
        for url in self.base_urls:
            try:
                r = httpx2.get(f"{url}/api/ps", timeout=self.timeout_s)
                r.raise_for_status()
                body: Any = r.json()
            except (httpx2.HTTPError, ValueError):
                continue
            found = found or []
            for m in loaded_models(body):
                found.append(OllamaModel(m.name, m.size_vram_bytes, m.name in self.pinned))
                where[m.name] = url
        # replaced whole, never emptied in place: a read-only caller (``gpumgr plan`` through
        # the daemon) reading at the same time as a start's unload cannot blank its lookup
        self._where = where
        return found

    def unload(self, models: Sequence[OllamaModel], reason: str) -> list[str]:
        """Ask Ollama to drop ``models`` now (``keep_alive: 0``); the names it agreed to unload."""
        done: list[str] = []
        for m in models:
            url = self._where.get(m.name)
            if url is None:
                continue
            try:
                r = httpx2.post(
                    f"{url}/api/generate", json={"model": m.name, "keep_alive": 0},
                    timeout=self.timeout_s,
                )
                r.raise_for_status()
            except httpx2.HTTPError as exc:
                log.warning("ollama.unload_failed", model=m.name, error=type(exc).__name__)
                continue
            done.append(m.name)
        if done:
            log.info("ollama.unloaded", models=done, reason=reason)
        return done
