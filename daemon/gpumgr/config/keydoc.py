"""Markdown tables of every key gpumgr reads, rendered from the models themselves.

``docs/configuration.md`` embeds these tables between ``<!-- keys:NAME -->`` markers;
``scripts/gen_config_docs.py`` rewrites them and ``tests/test_config_docs.py`` fails when the
page and the models disagree, so the documented keys and defaults cannot drift.
"""

from __future__ import annotations

import typing
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from gpumgr.config.registry import (
    Capability,
    ExactMatch,
    FallbackChain,
    HealthChecks,
    IdlePolicy,
    LoadBalancing,
    ModelEntry,
    Provider,
)
from gpumgr.config.settings import Settings

SECTIONS: dict[str, tuple[type[BaseModel], str]] = {
    "provider": (Provider, "providers.NAME."),
    "model": (ModelEntry, "providers.NAME.models[i]."),
    "idle": (IdlePolicy, "providers.NAME.idle."),
    "health_checks": (HealthChecks, "health_checks."),
    "exact_match": (ExactMatch, "exact_matches.ROUTER_NAME."),
    "capability": (Capability, "capabilities.NAME."),
    "fallback_chain": (FallbackChain, "fallback_chains.ROUTER_NAME."),
    "load_balancing": (LoadBalancing, "load_balancing."),
    "settings": (Settings, ""),
}
_SKIP: dict[type[BaseModel], set[str]] = {Provider: {"name"}}


def _type_text(ann: Any) -> str:
    if isinstance(ann, type) and issubclass(ann, Enum):
        return " \\| ".join(str(e.value) for e in ann)
    if isinstance(ann, type):
        return ann.__name__
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in typing.get_args(ann))
    if origin is not None:
        args = typing.get_args(ann)
        if origin in (typing.Union,) or str(origin) == "<class 'types.UnionType'>":
            return " \\| ".join("null" if a is type(None) else _type_text(a) for a in args)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_text(a) for a in args)}]"
    return str(ann)


def _default_text(field: Any) -> str:
    if field.default is PydanticUndefined:
        if field.default_factory is None:
            return "required"
        value = field.default_factory()
        return "(section)" if isinstance(value, BaseModel) else f"`{value!r}`"
    if field.default is None:
        return "unset"
    value = field.default.value if isinstance(field.default, Enum) else field.default
    return f"`{value}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        if name in _SKIP.get(model, set()):
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(_rows(ann, f"{prefix}{name}."))
            continue
        rows.append(f"| `{prefix}{name}` | {_type_text(ann)} | {_default_text(field)} |")
    return rows


def render_section(key: str) -> str:
    model, prefix = SECTIONS[key]
    head = ["| key | type | default |", "|---|---|---|"]
    return "\n".join(head + _rows(model, prefix))


def render_page(page: str) -> str:
    """``page`` with every ``<!-- keys:NAME -->`` … ``<!-- /keys -->`` block regenerated."""
    out: list[str] = []
    lines = page.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        if line.startswith("<!-- keys:") and line.endswith(" -->"):
            key = line[len("<!-- keys:") : -len(" -->")]
            out.append(render_section(key))
            while i < len(lines) and lines[i] != "<!-- /keys -->":
                i += 1
            out.append("<!-- /keys -->")
        i += 1
    return "\n".join(out) + "\n"
