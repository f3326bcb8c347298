"""Pydantic validation errors → one-line ``ConfigIssue``s in the operator's words.

Pydantic says "Input should be less than or equal to 1"; an operator wants
``providers.yaml:42:9: providers.qwen-14b.gpu_memory_utilization: must be > 0 and <= 1 (got 1.5)``.
"""

from __future__ import annotations

import difflib
import types
import typing
from enum import Enum
from typing import Any

import annotated_types as at
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gpumgr.config.source import KeyPath, YamlSource
from gpumgr.errors import ConfigIssue


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _field_info(root: type[BaseModel], loc: KeyPath) -> Any:
    """The pydantic FieldInfo at ``loc``, following dict values and list items; None if lost."""
    ann: Any = root
    info = None
    for part in loc:
        ann = _unwrap_optional(ann)
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if not isinstance(part, str) or part not in ann.model_fields:
                return None
            info = ann.model_fields[part]
            ann = info.annotation
        elif origin is dict:
            ann = typing.get_args(ann)[1]
            info = None
        elif origin is list:
            ann = typing.get_args(ann)[0]
            info = None
        else:
            return None
    return info


def _unwrap_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def _range_text(root: type[BaseModel], loc: KeyPath) -> str | None:
    info = _field_info(root, loc)
    if info is None:
        return None
    parts = []
    for m in info.metadata:
        if isinstance(m, at.Gt):
            parts.append(f"> {m.gt}")
        elif isinstance(m, at.Ge):
            parts.append(f">= {m.ge}")
        elif isinstance(m, at.Lt):
            parts.append(f"< {m.lt}")
        elif isinstance(m, at.Le):
            parts.append(f"<= {m.le}")
    return " and ".join(parts) or None


def _allowed_keys(root: type[BaseModel], loc: KeyPath) -> list[str]:
    ann: Any = root
    for part in loc:
        ann = _unwrap_optional(ann)
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(part, str):
            if part not in ann.model_fields:
                return []
            ann = ann.model_fields[part].annotation
        elif origin in (dict, list):
            ann = typing.get_args(ann)[-1]
        else:
            return []
    ann = _unwrap_optional(ann)
    return list(ann.model_fields) if isinstance(ann, type) and issubclass(ann, BaseModel) else []


def _enum_choices(root: type[BaseModel], loc: KeyPath) -> list[str]:
    info = _field_info(root, loc)
    ann = _unwrap_optional(info.annotation) if info is not None else None
    if isinstance(ann, type) and issubclass(ann, Enum):
        return [str(e.value) for e in ann]
    return []


def _message(root: type[BaseModel], err: ErrorDetails, loc: KeyPath) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        close = difflib.get_close_matches(key, _allowed_keys(root, loc[:-1]), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key{hint}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        rng = _range_text(root, loc)
        if rng:
            return f"must be {rng} (got {_got(value)})"
    if kind in ("enum", "literal_error"):
        choices = _enum_choices(root, loc) or [str(ctx.get("expected", ""))]
        return f"must be one of {', '.join(choices)} (got {_got(value)})"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be an integer (got {_got(value)})"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number (got {_got(value)})"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false (got {_got(value)})"
    if kind in ("string_type",):
        return f"must be a string (got {_type_name(value)})"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping (got {_type_name(value)})"
    if kind in ("list_type",):
        return f"must be a list (got {_type_name(value)})"
    if kind == "string_too_short":
        return "must not be empty"
    msg = err["msg"]
    return f"{msg[0].lower()}{msg[1:]} (got {_got(value)})"


def _clean_loc(loc: tuple[str | int, ...], data: Any) -> KeyPath:
    """Drop pydantic's union-branch tags (``FallbackChain``, ``list[str]``) from a location."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
        elif isinstance(part, int) or (isinstance(node, dict) and isinstance(part, str) and "[" not in part and not part[:1].isupper()):
            out.append(part)  # a missing key or an out-of-data location: keep it
            node = None
    return tuple(out)


def translate(root: type[BaseModel], src: YamlSource, exc: ValidationError) -> list[ConfigIssue]:
    """Every pydantic error of ``exc`` as a located issue; one per key path (the first wins)."""
    issues: list[ConfigIssue] = []
    seen: set[KeyPath] = set()
    for err in exc.errors(include_url=False):
        loc = _clean_loc(tuple(err["loc"]), src.data)
        if loc in seen:
            continue  # a union reports each branch's failure; one line per key is enough
        seen.add(loc)
        issues.append(src.issue(loc, _message(root, err, loc)))
    return issues
