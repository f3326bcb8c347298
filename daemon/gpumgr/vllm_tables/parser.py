"""``vllm serve``'s argument parser as each known vLLM release declares it, from its own table.

Every option string, its ``dest`` (aliases and negations share one), and how many values it takes
come from the release's generated module (``gpumgr.vllm_tables.v0_33_0``, ``v0_34_0``, made from
``shared/reference`` by ``scripts/gen_vllm_tables.py``); nothing here is a hand-written flag list.
The package carries the tables because the daemon checks a provider's ``extra_args`` at run time
against the release that provider runs, and the simulated engine must reject what the real parser
of the release it imitates rejects, where ``shared/reference`` is not installed. A ``FlagTable``
is one release; the module-level names (``FLAGS``, ``parse_serve_args`` …) default to 0.33.0.

The parse follows argparse plus vLLM's ``FlexibleArgumentParser`` preprocessing: ``--a_b`` is
``--a-b``; ``-O3`` / ``-O 3`` are ``--optimization-level 3`` and ``-O.key`` is
``--compilation-config.key``; ``--json-flag.key=value`` sets one key of a JSON-valued flag;
single-dash options take attached values (``-qawq``). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from types import ModuleType

from gpumgr.vllm_tables import v0_33_0

__all__ = [
    "Arity", "DEFAULT_TABLE", "FLAGS", "FLAGS_BY_DEST", "FlagSpec", "FlagTable", "KNOWN_FLAGS",
    "MANAGED_DESTS",
    "ParsedServeArgs", "QUANTIZATION_METHODS", "DEPRECATED_QUANTIZATION_METHODS", "ServeArg",
    "ServeArgsError", "VLLM_VERSION", "canonical_flag", "check_extra_args", "parse_serve_args",
]  # fmt: skip


class Arity(Enum):
    """How many values one use of a flag takes (argparse's ``nargs``)."""

    NONE = "0"  # switches: store_true, EnableDisable (--x / --no-x), help
    ONE = "1"  # store / append with nargs=None: exactly one value per use
    OPTIONAL = "?"  # one value or none (the const)
    ONE_OR_MORE = "+"  # every following non-flag token


_JSON_TYPES = frozenset({"parse_dataclass", "union_dict_and_str"})
"""Value types vLLM parses as a JSON object: only these take ``--flag.key=value``."""


@dataclass(frozen=True)
class FlagSpec:
    """One option string of the parser."""

    flag: str
    dest: str
    action: str
    arity: Arity
    negates: bool
    """True for ``--no-x`` / ``--disable-x``: the switch sets its ``dest`` to False."""
    deprecated: str
    value_type: str

    @property
    def appends(self) -> bool:
        """An append action: each use adds one value (``--middleware a --middleware b``)."""
        return self.action == "_AppendAction"

    @property
    def takes_json(self) -> bool:
        return self.value_type in _JSON_TYPES


def _arity(flag: str, nargs: str) -> Arity:
    if nargs == "0":
        return Arity.NONE
    if nargs == "None":
        return Arity.ONE
    if nargs == "?":
        return Arity.OPTIONAL
    if nargs == "+":
        return Arity.ONE_OR_MORE
    raise ValueError(f"vllm_tables: {flag} has nargs={nargs!r}, which gpumgr does not parse")


@dataclass(frozen=True)
class FlagTable:
    """One release's parser: its option strings, the option strings of each ``dest``, and its
    ``--quantization`` methods."""

    version: str
    flags: Mapping[str, FlagSpec]
    by_dest: Mapping[str, tuple[str, ...]]
    quantization_methods: frozenset[str]
    deprecated_quantization_methods: frozenset[str]

    @classmethod
    def of(cls, module: ModuleType) -> FlagTable:
        """The table of a generated release module (``VLLM_VERSION``, ``SERVE_FLAGS``,
        ``QUANTIZATION_METHODS``)."""
        flags = {
            flag: FlagSpec(flag, dest, action, _arity(flag, nargs), negates, deprecated, vtype)
            for flag, dest, action, nargs, negates, deprecated, vtype in module.SERVE_FLAGS
        }
        by_dest = {
            dest: tuple(sorted(f for f, s in flags.items() if s.dest == dest))
            for dest in {s.dest for s in flags.values()}
        }
        methods = module.QUANTIZATION_METHODS
        return cls(
            str(module.VLLM_VERSION), flags, by_dest, frozenset(m for m, _ in methods),
            frozenset(m for m, dep in methods if dep),
        )  # fmt: skip

    def has_dest(self, dest: str) -> bool:
        return dest in self.by_dest


DEFAULT_TABLE = FlagTable.of(v0_33_0)
"""vLLM 0.33.0: the release gpumgr assumes when it does not know which one a provider runs."""
VLLM_VERSION = DEFAULT_TABLE.version
FLAGS: Mapping[str, FlagSpec] = DEFAULT_TABLE.flags
KNOWN_FLAGS: frozenset[str] = frozenset(FLAGS)
FLAGS_BY_DEST: Mapping[str, tuple[str, ...]] = DEFAULT_TABLE.by_dest
QUANTIZATION_METHODS: frozenset[str] = DEFAULT_TABLE.quantization_methods
DEPRECATED_QUANTIZATION_METHODS: frozenset[str] = DEFAULT_TABLE.deprecated_quantization_methods

MANAGED_DESTS: Mapping[str, str] = {
    "host": "the engine binds to the host of the provider's base_url",
    "port": "the port comes from the provider's base_url",
    "uds": "the engine must listen on the provider's base_url, not a unix socket",
    "gpu_memory_utilization": "the planner computes the fraction; pin it with the provider key "
    "gpu_memory_utilization",
    "kv_cache_memory_bytes": "the planner sizes the KV cache through the fraction",
    "num_gpu_blocks_override": "the planner sizes the KV cache through the fraction",
    "served_model_name": "served names come from the provider's models (served_model_name, "
    "aliases)",
    "model": "the model comes from the provider's models",
    "max_model_len": "use the provider key max_model_len",
    "max_num_seqs": "use the provider key max_num_seqs",
    "quantization": "use the provider key quantization",
    "enforce_eager": "use the provider key enforce_eager",
    "enable_sleep_mode": "use the provider key enable_sleep_mode",
    "trust_remote_code": "use the provider key trust_remote_code",
    "api_key": "secrets never go on the command line; name the variable in env_var",
    "hf_token": "secrets never go on the command line; gpumgr fetches the weights",
    "config": "a config file can set any flag, the planned ones and the API key included; "
    "put its flags in extra_args",
}
"""vLLM settings (by ``dest``) gpumgr decides itself. In ``extra_args`` any option string of
these (every alias and negation) would silently override the plan, since argparse keeps the last
value, so it is refused with the provider key to use instead."""


class ServeArgsError(ValueError):
    """An argument list ``vllm serve`` would reject (its parser exits 2 with this message), or
    one gpumgr refuses; ``index`` is the offending token's position when known."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class ServeArg:
    """One option as the parser sees it: canonical spelling (dashes, no ``=``) and its values."""

    flag: str
    values: tuple[str, ...] = ()
    spec: FlagSpec | None = field(default=None, compare=False, repr=False)
    index: int = field(default=0, compare=False, repr=False)
    """Position of the option's first token in the parsed list."""

    @property
    def dest(self) -> str:
        return self.spec.dest if self.spec else self.flag.lstrip("-").replace("-", "_")

    def tokens(self) -> list[str]:
        if "." in self.flag and self.values:  # a dotted JSON key keeps its one-token form
            return [f"{self.flag}={self.values[0]}"]
        return [self.flag, *self.values]


@dataclass(frozen=True)
class ParsedServeArgs:
    positionals: tuple[str, ...]
    flags: tuple[ServeArg, ...]

    def last(self, flag: str) -> ServeArg | None:
        """The last occurrence of the option string ``flag``."""
        for arg in reversed(self.flags):
            if arg.flag == flag:
                return arg
        return None

    def last_dest(self, dest: str) -> ServeArg | None:
        """The last option that sets ``dest``, by any alias (argparse's rule: the last wins)."""
        for arg in reversed(self.flags):
            if arg.dest == dest and not arg.flag.count("."):
                return arg
        return None

    def value(self, dest: str) -> str | None:
        arg = self.last_dest(dest)
        return arg.values[0] if arg and arg.values else None

    def switch(self, dest: str, default: bool = False) -> bool:
        """A boolean ``dest`` after every ``--x`` / ``--no-x`` / ``--disable-x``: the last wins."""
        arg = self.last_dest(dest)
        if arg is None or arg.spec is None:
            return default
        return not arg.spec.negates


_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
_OPT_LEVELS = frozenset({"0", "1", "2", "3"})


def _looks_like_flag(token: str) -> bool:
    return token.startswith("-") and token != "-" and not _NEGATIVE_NUMBER.match(token)


def canonical_flag(token: str) -> str:
    """``--max_model_len`` and ``--max-model-len`` are one flag to vLLM's parser; as in vLLM,
    only the name before a dotted JSON key is rewritten (``--compilation-config.cudagraph_mode``)."""
    if token.startswith("--"):
        name, dot, key = token[2:].partition(".")
        return "--" + name.replace("_", "-") + dot + key
    return token


def _preprocess(tokens: list[str]) -> list[tuple[str, int]]:
    """vLLM's rewrites before argparse (``-O`` forms), each token with its original index."""
    out: list[tuple[str, int]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("-O.") and len(token) > 3:
            out.append(("--compilation-config." + token[3:], i))
        elif token.startswith("-O") and len(token) > 2:
            level = token[3:] if token[2] == "=" else token[2:]
            out.append((f"--optimization-level={level}", i))
        elif token == "-O" and i + 1 < len(tokens) and tokens[i + 1] in _OPT_LEVELS:
            out.append(("--optimization-level", i))
        else:
            out.append((token, i))
        i += 1
    return out


def _split_option(
    token: str, flags: Mapping[str, FlagSpec]
) -> tuple[str, FlagSpec, str | None] | None:
    """(canonical option, spec, attached value) for an option token; None when unknown."""
    if token.startswith("--"):
        name, eq, inline = token.partition("=")
        flag = canonical_flag(name)
        base, dot, _key = flag.partition(".")
        if dot:
            spec = flags.get(base)
            if spec is None or not spec.takes_json:
                return None
            return flag, spec, inline if eq else None
        spec = flags.get(flag)
        return (flag, spec, inline if eq else None) if spec else None
    name, eq, inline = token.partition("=")
    if eq and name in flags:
        return name, flags[name], inline
    if token in flags:
        return token, flags[token], None
    short = token[:2]
    if short in flags and len(token) > 2:
        return short, flags[short], token[2:]  # argparse: -qawq is -q awq
    return None


_CONVERTERS = {"int": int, "float": float}


def _check_type(flag: str, spec: FlagSpec, value: str, index: int) -> None:
    """argparse converts ``int`` and ``float`` values while parsing: a bad one exits 2 there."""
    convert = _CONVERTERS.get(spec.value_type)
    if convert is None or "." in flag:
        return
    try:
        convert(value)
    except ValueError:
        raise ServeArgsError(
            f"argument {flag}: invalid {spec.value_type} value: {value!r}", index
        ) from None


def parse_serve_args(tokens: list[str], table: FlagTable = DEFAULT_TABLE) -> ParsedServeArgs:
    """Split ``vllm serve``'s arguments (after ``serve``) the way ``table``'s release parses them.

    Unknown options, missing values and values given to switches raise ``ServeArgsError`` with
    argparse's wording. Abbreviated long options are refused (gpumgr never relies on them).
    """
    positionals: list[str] = []
    flags: list[ServeArg] = []
    unknown: list[tuple[str, int]] = []
    items = _preprocess(tokens)
    i = 0
    while i < len(items):
        token, index = items[i]
        i += 1
        if token == "--":
            positionals.extend(t for t, _ in items[i:])
            break
        if not _looks_like_flag(token):
            positionals.append(token)
            continue
        split = _split_option(token, table.flags)
        if split is None:
            unknown.append((tokens[index], index))
            continue
        flag, spec, inline = split
        if spec.arity is Arity.NONE:
            if inline is not None:
                if not token.startswith("--") and "=" not in token:
                    # argparse chains single-dash switches: -hX is -h -X
                    items.insert(i, ("-" + inline, index))
                    flags.append(ServeArg(flag, (), spec, index))
                    continue
                raise ServeArgsError(f"argument {flag}: ignored explicit argument {inline!r}", index)
            flags.append(ServeArg(flag, (), spec, index))
            continue
        if inline is not None:
            _check_type(flag, spec, inline, index)
            flags.append(ServeArg(flag, (inline,), spec, index))
            continue
        values: list[str] = []
        while i < len(items) and not _looks_like_flag(items[i][0]):
            values.append(items[i][0])
            i += 1
            if spec.arity is not Arity.ONE_OR_MORE:
                break
        if not values and spec.arity is not Arity.OPTIONAL:
            what = "at least one argument" if spec.arity is Arity.ONE_OR_MORE else "one argument"
            raise ServeArgsError(f"argument {flag}: expected {what}", index)
        for v in values:
            _check_type(flag, spec, v, index)
        flags.append(ServeArg(flag, tuple(values), spec, index))
    if unknown:
        names = " ".join(t for t, _ in unknown)
        raise ServeArgsError(f"unrecognized arguments: {names}", unknown[0][1])
    return ParsedServeArgs(tuple(positionals), tuple(flags))


def check_extra_args(tokens: list[str], table: FlagTable = DEFAULT_TABLE) -> list[str]:
    """A provider's ``extra_args`` in canonical spelling, or ``ServeArgsError``.

    Every option must be one ``vllm serve`` of ``table``'s release accepts; an option of a managed setting (by
    ``dest``: ``--device-memory-utilization``, ``--no-enforce-eager``, ``--uds``, ``--config`` …)
    is refused with the provider key to use instead; loose values (no option before them) are
    refused, since vLLM would take them as a second model.
    """
    try:
        parsed = parse_serve_args(list(tokens), table)
    except ServeArgsError as exc:
        raise ServeArgsError(f"vllm serve {table.version} would reject these: {exc}", exc.index)
    if parsed.positionals:
        loose = parsed.positionals[0]
        raise ServeArgsError(
            f"{loose!r} is not a flag nor a flag's value", _index_of(tokens, loose)
        )
    out: list[str] = []
    for arg in parsed.flags:
        reason = MANAGED_DESTS.get(arg.dest)
        if reason:
            also = f"vLLM's {arg.dest}; " if arg.flag.lstrip("-").replace("-", "_") != arg.dest else ""
            raise ServeArgsError(f"{arg.flag} is set by gpumgr ({also}{reason})", arg.index)
        out.extend(arg.tokens())
    return out


def _index_of(tokens: list[str], value: str) -> int | None:
    return tokens.index(value) if value in tokens else None
