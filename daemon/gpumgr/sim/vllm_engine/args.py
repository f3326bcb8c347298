"""``vllm serve``'s command line, parsed like the imitated vLLM release does (0.33.0 unless
``GPUMGR_SIM_VLLM_VERSION`` says otherwise) for the flags the simulation acts on.

The parser is ``gpumgr.vllm_tables``, derived from each release's own option table: every option
string is accepted with the arity vLLM gives it (``--middleware a b`` is refused like vLLM
refuses it), and settings are read by ``dest``, so an alias (``--device-memory-utilization``)
or a negation (``--no-enforce-eager``, ``--disable-sleep-mode``) acts as in vLLM. Options the
simulation does not act on are accepted and ignored; unknown ones are rejected (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gpumgr.vllm_tables.parser import (
    DEFAULT_TABLE,
    FlagTable,
    ParsedServeArgs,
    ServeArgsError,
    parse_serve_args,
)

USAGE = "usage: vllm serve [model_tag] [options]"
DEFAULT_FRACTION = 0.92
"""0.33's default; from 0.34 (extensible KV cache on) the default cap is 1.0."""
EXTENSIBLE_DEFAULT_FRACTION = 1.0
DEFAULT_PORT = 8000
DEFAULT_MAX_NUM_SEQS = 256
DTYPES = ("auto", "bfloat16", "float", "float16", "float32", "half")

_HUMAN_INT = re.compile(r"^(\d+(?:\.\d+)?)([kKmMgG]?)$")
_DECIMAL = {"k": 1000, "m": 1000**2, "g": 1000**3}
_BINARY = {"K": 1024, "M": 1024**2, "G": 1024**3}


@dataclass(frozen=True)
class ServeArgs:
    """The flags the simulated engine acts on, with vLLM's defaults."""

    model_path: Path
    served_names: tuple[str, ...]
    host: str | None
    port: int
    fraction: float
    max_model_len: int | None
    max_num_seqs: int
    dtype: str
    quantization: str | None
    enforce_eager: bool
    enable_sleep_mode: bool
    api_key: str | None
    kv_cache_memory_bytes: int | None
    help_requested: bool = False
    extensible_kv_cache: bool = False
    """0.34's KV cache sized after warm-up: on by default there, off with
    ``--no-enable-extensible-kv-cache``, ``--kv-cache-memory-bytes`` or
    ``--num-gpu-blocks-override`` (vllm/config/cache.py)."""


def _human_int(flag: str, text: str) -> int:
    """vLLM reads sizes like ``32k`` (×1000) and ``32K`` (×1024) as well as plain integers."""
    m = _HUMAN_INT.match(text.strip())
    if not m:
        raise ServeArgsError(f"argument {flag}: invalid human_readable_int value: {text!r}")
    number, suffix = float(m.group(1)), m.group(2)
    scale = _DECIMAL.get(suffix) or _BINARY.get(suffix) or 1
    return int(number * scale)


def _value(parsed: ParsedServeArgs, dest: str) -> str | None:
    """The last value given to ``dest`` by any of its option strings."""
    return parsed.value(dest)


def _int(parsed: ParsedServeArgs, dest: str, default: int | None) -> int | None:
    text = _value(parsed, dest)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        arg = parsed.last_dest(dest)
        flag = arg.flag if arg else dest
        raise ServeArgsError(f"argument {flag}: invalid int value: {text!r}") from None


def parse_args(
    tokens: list[str], table: FlagTable = DEFAULT_TABLE, extensible_default: bool = False
) -> ServeArgs:
    """``tokens`` are what follows ``vllm``: ``serve MODEL [flags]``; ``table`` is the imitated
    release's parser, ``extensible_default`` whether it sizes the KV cache after warm-up."""
    if not tokens or tokens[0] != "serve":
        raise ServeArgsError("the first argument must be the subcommand 'serve'")
    parsed = parse_serve_args(tokens[1:], table)
    if parsed.last_dest("help"):
        return _help_args()
    model = parsed.positionals[0] if parsed.positionals else _value(parsed, "model")
    if len(parsed.positionals) > 1:
        raise ServeArgsError(f"unrecognized arguments: {' '.join(parsed.positionals[1:])}")
    if not model:
        raise ServeArgsError("a model (path or tag) is required")
    names_arg = parsed.last_dest("served_model_name")
    names = names_arg.values if names_arg and names_arg.values else (model,)
    extensible = (
        extensible_default
        and parsed.switch("enable_extensible_kv_cache", default=True)
        and _value(parsed, "kv_cache_memory_bytes") is None
        and _value(parsed, "num_gpu_blocks_override") is None
    )
    default_fraction = EXTENSIBLE_DEFAULT_FRACTION if extensible else DEFAULT_FRACTION
    fraction_text = _value(parsed, "gpu_memory_utilization")
    try:
        fraction = float(fraction_text) if fraction_text is not None else default_fraction
    except ValueError:
        raise ServeArgsError(
            f"argument --gpu-memory-utilization: invalid float value: {fraction_text!r}"
        ) from None
    if not 0 < fraction <= 1:
        raise ServeArgsError("argument --gpu-memory-utilization: must be in (0, 1]")
    dtype = _value(parsed, "dtype") or "auto"
    if dtype not in DTYPES:
        choices = ", ".join(repr(d) for d in DTYPES)
        raise ServeArgsError(f"argument --dtype: invalid choice: {dtype!r} (choose from {choices})")
    quantization = _quantization(parsed, table)
    max_len_text = _value(parsed, "max_model_len")
    kv_text = _value(parsed, "kv_cache_memory_bytes")
    api_key = parsed.last_dest("api_key")
    port = _int(parsed, "port", DEFAULT_PORT)
    seqs = _int(parsed, "max_num_seqs", DEFAULT_MAX_NUM_SEQS)
    assert port is not None and seqs is not None
    return ServeArgs(
        model_path=Path(model),
        served_names=tuple(names),
        host=_value(parsed, "host"),
        port=port,
        fraction=fraction,
        max_model_len=_human_int("--max-model-len", max_len_text) if max_len_text else None,
        max_num_seqs=seqs,
        dtype=dtype,
        quantization=quantization,
        enforce_eager=parsed.switch("enforce_eager"),
        enable_sleep_mode=parsed.switch("enable_sleep_mode"),
        api_key=api_key.values[0] if api_key and api_key.values else None,
        kv_cache_memory_bytes=_human_int("--kv-cache-memory-bytes", kv_text) if kv_text else None,
        extensible_kv_cache=extensible,
    )


def _quantization(parsed: ParsedServeArgs, table: FlagTable) -> str | None:
    """vLLM checks ``--quantization`` against its QUANTIZATION_METHODS (deprecated ones only with
    ``--allow-deprecated-quantization``) before it loads anything."""
    method = _value(parsed, "quantization")
    if method is None:
        return None
    if method not in table.quantization_methods:
        known = ", ".join(sorted(table.quantization_methods))
        raise ServeArgsError(f"Unknown quantization method: {method}. Must be one of [{known}].")
    if method in table.deprecated_quantization_methods and not parsed.switch("allow_deprecated_quantization"):
        raise ServeArgsError(
            f"The quantization method {method} is deprecated; "
            "pass --allow-deprecated-quantization to use it."
        )
    return method


def _help_args() -> ServeArgs:
    return ServeArgs(Path("."), (), None, 0, DEFAULT_FRACTION, None, 0, "auto", None, False,
                     False, None, None, help_requested=True)  # fmt: skip
