"""Warnings for ``load_balancing:`` in ``model-mappings.yaml`` (pure; no I/O).

The section is the router's, free-form in the owner's registry (``strategy: priority``,
``health_aware: true``). gpumgr never routes by it, so nothing here is an error; but what its
LiteLLM config does is fixed (``registry.LoadBalancing``): each router name goes to its one
backend and then down its fallback chain in order (priority), and the gpumgr callback skips the
backends gpumgr reports down (health-aware). A value that asks for something else, or a key
gpumgr does not read, is a warning naming the line and what gpumgr accepts, so an owner who
expects round-robin or health-blind routing learns that they will not get it.
"""

from __future__ import annotations

import typing
from typing import Any

from gpumgr.config.registry import LoadBalancing
from gpumgr.config.source import YamlSource
from gpumgr.config.typos import close_key
from gpumgr.errors import ConfigIssue

SECTION = "load_balancing"
ACCEPTED_KEYS: tuple[str, ...] = tuple(LoadBalancing.model_fields)


def _literal_values(annotation: Any) -> tuple[str, ...]:
    """The strings of a ``Literal[...] | None`` annotation."""
    out: list[str] = []
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            out.extend(str(v) for v in typing.get_args(arg))
    return tuple(out)


STRATEGIES = _literal_values(LoadBalancing.model_fields["strategy"].annotation)
"""The strategies gpumgr's LiteLLM config realises (``LoadBalancing.strategy``)."""


def _quoted(items: tuple[str, ...]) -> str:
    return ", ".join(f"'{i}'" for i in items)


def check_load_balancing(section: Any, src: YamlSource) -> list[ConfigIssue]:
    """Warnings (never errors) for the ``load_balancing`` section as written."""
    if section is None or section == {}:
        return []
    if not isinstance(section, dict):
        return [src.issue((SECTION,), (
            f"kept for the router, but gpumgr reads a mapping here (keys "
            f"{_quoted(ACCEPTED_KEYS)}); got {type(section).__name__}"))]
    out: list[ConfigIssue] = []
    for key, value in section.items():
        here = (SECTION, key)
        if key == "strategy":
            if value is not None and value not in STRATEGIES:
                out.append(src.issue(here, (
                    f"{value!r} is kept for the router, but gpumgr's LiteLLM config routes by "
                    f"priority: each router name to its one backend, then down its fallback "
                    f"chain in order (accepted: {_quoted(STRATEGIES)})")))
        elif key == "health_aware":
            if not isinstance(value, bool):
                out.append(src.issue(here, f"must be true or false (got {value!r})"))
            elif not value:
                out.append(src.issue(here, (
                    "false is not what the router gets: the gpumgr callback in the LiteLLM "
                    "config skips backends gpumgr reports down (leave the callback line out to "
                    "route without it)")))
        else:
            hint = close_key(str(key), ACCEPTED_KEYS)
            did = f"did you mean '{hint}'? " if hint else ""
            out.append(src.issue(here, (
                f"unknown key, kept for the router; {did}gpumgr reads only "
                f"{_quoted(ACCEPTED_KEYS)} here")))
    return out
