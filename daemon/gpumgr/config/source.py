"""Reading a YAML file into plain data plus the line and column of every key path.

PyYAML's composer gives each node a start mark; walking the node tree once yields both the Python
value and a position table, so that every later error (pydantic's or a cross-file check) can name
``file:line:column`` and the key path. Duplicate keys, anchors that explode, oversized and
non-UTF-8 files are reported here, before any model sees the data.

YAML merge keys (``<<: *base``, ``<<: [*a, *b]``) are flattened here as PyYAML's safe loader
does (the mapping's own keys win, then the first merged mapping's), and a merged key's position
points into the mapping it came from, which is where an operator must edit it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpumgr.errors import ConfigIssue

MAX_FILE_BYTES = 2 * 1024 * 1024
"""A registry is a few KiB; anything past 2 MiB is a mistake (or an attack), not a config."""
MAX_NODES = 100_000
"""Bound on values built from one document, so alias expansion ("billion laughs") cannot explode."""

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class YamlSource:
    """One file's data and where each key path sits in it."""

    file: str
    data: Any
    positions: dict[KeyPath, Position] = field(default_factory=dict)

    def where(self, path: KeyPath) -> Position | None:
        """Position of ``path`` or of its nearest ancestor that has one."""
        p = tuple(path)
        while True:
            if p in self.positions:
                return self.positions[p]
            if not p:
                return None
            p = p[:-1]

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        pos = self.where(path)
        return ConfigIssue(
            self.file,
            pos.line if pos else None,
            pos.column if pos else None,
            format_path(path),
            message,
        )


def format_path(path: KeyPath) -> str:
    """``("providers", "qwen-14b", "models", 0, "hf_repo")`` → ``providers.qwen-14b.models[0].hf_repo``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Builder:
    def __init__(self, src: YamlSource) -> None:
        self.src = src
        self.count = 0
        self.issues: list[ConfigIssue] = []

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig()
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in self._flatten(node, path):
                key = self.build(key_node, path)
                if isinstance(key, (dict, list)) or key is None:
                    self.issues.append(
                        _issue_at(self.src.file, key_node, format_path(path), "keys must be scalars")
                    )
                    continue
                key_str = key if isinstance(key, str) else str(key)
                child = (*path, key_str)
                if key_str in out:
                    self.issues.append(
                        _issue_at(self.src.file, key_node, format_path(child), "duplicate key")
                    )
                self.src.positions[child] = _pos(key_node)
                out[key_str] = self.build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.src.positions[(*path, i)] = _pos(item)
                items.append(self.build(item, (*path, i)))
            return items
        return _construct_scalar(node)


    def _flatten(self, node: yaml.MappingNode, path: KeyPath) -> list[tuple[yaml.Node, yaml.Node]]:
        """The mapping's own pairs, then each merged pair whose key it does not already have."""
        own: list[tuple[yaml.Node, yaml.Node]] = []
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != MERGE_TAG:
                own.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    self.issues.append(
                        _issue_at(self.src.file, source, format_path(path),
                                  "a merge key '<<' takes a mapping or a list of mappings")
                    )  # fmt: skip
                    continue
                self.count += len(source.value)
                if self.count > MAX_NODES:
                    raise _TooBig()
                merged.extend(self._flatten(source, path))
        seen = {_key_text(k) for k, _ in own}
        out = list(own)
        for key_node, value_node in merged:
            text = _key_text(key_node)
            if text not in seen:
                seen.add(text)
                out.append((key_node, value_node))
        return out


MERGE_TAG = "tag:yaml.org,2002:merge"


def _key_text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else repr(id(node))


class _TooBig(Exception):
    pass


def _pos(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _issue_at(file: str, node: yaml.Node, path: str, message: str) -> ConfigIssue:
    p = _pos(node)
    return ConfigIssue(file, p.line, p.column, path, message)


def _construct_scalar(node: yaml.Node) -> Any:
    """The Python value PyYAML's safe loader gives a scalar (int, float, bool, null, str, date)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()



def read_yaml(path: Path, display_name: str | None = None) -> tuple[YamlSource, list[ConfigIssue]]:
    """Read one YAML file. Returns the source (data ``None`` on fatal problems) and the issues."""
    name = display_name or path.name
    src = YamlSource(name, None)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return src, [
                ConfigIssue(
                    name, None, None, "",
                    f"file is {size / 1e6:.1f} MB, over the {MAX_FILE_BYTES // (1024 * 1024)} MiB "
                    "limit for a configuration file",
                )
            ]
        raw = path.read_bytes()
    except OSError as exc:
        return src, [ConfigIssue(name, None, None, "", f"cannot read: {exc.strerror or exc}")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return src, [
            ConfigIssue(
                name, line, column, "", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})"
            )
        ]
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        return src, [
            ConfigIssue(
                name,
                mark.line + 1 if mark else None,
                mark.column + 1 if mark else None,
                "",
                f"YAML syntax error: {problem}",
            )
        ]
    except yaml.YAMLError as exc:
        return src, [ConfigIssue(name, None, None, "", f"YAML error: {exc}")]
    if node is None:
        src.data = None
        return src, []
    src.positions[()] = _pos(node)
    builder = _Builder(src)
    try:
        src.data = builder.build(node, ())
    except _TooBig:
        return src, [
            ConfigIssue(name, None, None, "", f"document expands to more than {MAX_NODES} values")
        ]
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        return src, [ConfigIssue(name, None, None, "", f"YAML error: {exc}")]
    return src, builder.issues
