"""Warnings for keys that look like a misspelling of a key gpumgr acts on (pure; no I/O).

The registry carries many descriptive keys gpumgr ignores, so an unknown key is never an error.
But ``max_model_lenn: 8192`` is not description: it silently leaves the real key at its default
and changes the plan. A key within a small edit distance of one gpumgr reads at that place is
reported as a warning with "did you mean …?" (``gpumgr validate --strict`` makes it fatal).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from gpumgr.config.registry import (
    Capability,
    ExactMatch,
    FallbackChain,
    HealthChecks,
    MappingsFile,
    ModelEntry,
    Provider,
    ProvidersFile,
)
from gpumgr.config.source import KeyPath, YamlSource
from gpumgr.errors import ConfigIssue


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance (insert, delete, substitute, swap two neighbours)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


def _norm(key: str) -> str:
    return key.lower().replace("-", "_")


def close_key(key: str, known: Iterable[str]) -> str | None:
    """The known key ``key`` most likely misspells, or None when it is simply another key.

    Small edit distance only: one edit for keys of up to 6 characters, two beyond, so that
    descriptive keys (``size``, ``docs``, ``features``) are never mistaken for gpumgr's.
    """
    k = _norm(key)
    limit = 1 if len(k) <= 6 else 2
    best: tuple[int, str] | None = None
    for cand in known:
        if cand == key:
            return None
        d = edit_distance(k, cand)
        if d <= limit and (best is None or d < best[0]):
            best = (d, cand)
    return best[1] if best else None


def _fields(model: type[BaseModel], *, skip: Iterable[str] = ()) -> list[str]:
    return [f for f in model.model_fields if f not in set(skip)]


def _check(
    node: Any, model: type[BaseModel], path: KeyPath, src: YamlSource, out: list[ConfigIssue],
    *, skip: Iterable[str] = (),
) -> None:
    if not isinstance(node, dict):
        return
    known = _fields(model, skip=skip)
    for key in node:
        if isinstance(key, str) and key not in model.model_fields:
            hit = close_key(key, known)
            if hit:
                out.append(
                    src.issue(
                        (*path, key),
                        f"unknown key, kept as description; did you mean '{hit}'? "
                        f"(gpumgr reads '{hit}' here)",
                    )
                )


def provider_typos(src: YamlSource) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    data = src.data
    if not isinstance(data, dict):
        return out
    _check(data, ProvidersFile, (), src, out)
    _check(data.get("health_checks"), HealthChecks, ("health_checks",), src, out)
    providers = data.get("providers")
    if isinstance(providers, dict):
        for name, p in providers.items():
            _check(p, Provider, ("providers", name), src, out, skip=("name",))
            models = p.get("models") if isinstance(p, dict) else None
            for i, m in enumerate(models if isinstance(models, list) else []):
                _check(m, ModelEntry, ("providers", name, "models", i), src, out)
    return out


def mapping_typos(src: YamlSource) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    data = src.data
    if not isinstance(data, dict):
        return out
    _check(data, MappingsFile, (), src, out)
    sections: list[tuple[str, type[BaseModel]]] = [
        ("exact_matches", ExactMatch), ("capabilities", Capability), ("fallback_chains", FallbackChain),
    ]  # fmt: skip
    for section, model in sections:
        entries = data.get(section)
        if isinstance(entries, dict):
            for key, entry in entries.items():
                _check(entry, model, (section, key), src, out)
    return out
