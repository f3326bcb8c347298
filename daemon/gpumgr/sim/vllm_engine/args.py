"""``vllm serve``'s command line, parsed like vLLM 0.33.0 does for the flags the simulation acts on.

Every flag of the real parser is accepted (``gpumgr.engines.vllm_flags``); flags the simulation
does not act on are accepted and ignored, unknown ones are rejected like argparse (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gpumgr.engines.vllm_flags import ParsedServeArgs, ServeArgsError, parse_serve_args

USAGE = "usage: vllm serve [model_tag] [options]"
DEFAULT_FRACTION = 0.92
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


def _human_int(flag: str, text: str) -> int:
    """vLLM reads sizes like ``32k`` (×1000) and ``32K`` (×1024) as well as plain integers."""
    m = _HUMAN_INT.match(text.strip())
    if not m:
        raise ServeArgsError(f"argument {flag}: invalid human_readable_int value: {text!r}")
    number, suffix = float(m.group(1)), m.group(2)
    scale = _DECIMAL.get(suffix) or _BINARY.get(suffix) or 1
    return int(number * scale)


def _value(parsed: ParsedServeArgs, flag: str) -> str | None:
    arg = parsed.last(flag)
    return arg.values[0] if arg and arg.values else None


def _int(parsed: ParsedServeArgs, flag: str, default: int | None) -> int | None:
    text = _value(parsed, flag)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ServeArgsError(f"argument {flag}: invalid int value: {text!r}") from None


def _switch(parsed: ParsedServeArgs, flag: str) -> bool:
    """``--x`` / ``--no-x`` pairs: the last one given wins."""
    on = off = -1
    for i, arg in enumerate(parsed.flags):
        if arg.flag == flag:
            on = i
        elif arg.flag == "--no-" + flag[2:]:
            off = i
    return on > off


def parse_args(tokens: list[str]) -> ServeArgs:
    """``tokens`` are what follows ``vllm``: ``serve MODEL [flags]``."""
    if not tokens or tokens[0] != "serve":
        raise ServeArgsError("the first argument must be the subcommand 'serve'")
    parsed = parse_serve_args(tokens[1:])
    if parsed.last("--help") or parsed.last("-h"):
        return _help_args()
    model = parsed.positionals[0] if parsed.positionals else _value(parsed, "--model")
    if len(parsed.positionals) > 1:
        raise ServeArgsError(f"unrecognized arguments: {' '.join(parsed.positionals[1:])}")
    if not model:
        raise ServeArgsError("a model (path or tag) is required")
    names_arg = parsed.last("--served-model-name")
    names = names_arg.values if names_arg and names_arg.values else (model,)
    fraction_text = _value(parsed, "--gpu-memory-utilization")
    try:
        fraction = float(fraction_text) if fraction_text is not None else DEFAULT_FRACTION
    except ValueError:
        raise ServeArgsError(
            f"argument --gpu-memory-utilization: invalid float value: {fraction_text!r}"
        ) from None
    if not 0 < fraction <= 1:
        raise ServeArgsError("argument --gpu-memory-utilization: must be in (0, 1]")
    dtype = _value(parsed, "--dtype") or "auto"
    if dtype not in DTYPES:
        choices = ", ".join(repr(d) for d in DTYPES)
        raise ServeArgsError(f"argument --dtype: invalid choice: {dtype!r} (choose from {choices})")
    max_len_text = _value(parsed, "--max-model-len")
    kv_text = _value(parsed, "--kv-cache-memory-bytes")
    api_key = parsed.last("--api-key")
    port = _int(parsed, "--port", DEFAULT_PORT)
    seqs = _int(parsed, "--max-num-seqs", DEFAULT_MAX_NUM_SEQS)
    assert port is not None and seqs is not None
    return ServeArgs(
        model_path=Path(model),
        served_names=tuple(names),
        host=_value(parsed, "--host"),
        port=port,
        fraction=fraction,
        max_model_len=_human_int("--max-model-len", max_len_text) if max_len_text else None,
        max_num_seqs=seqs,
        dtype=dtype,
        quantization=_value(parsed, "--quantization") or _value(parsed, "-q"),
        enforce_eager=_switch(parsed, "--enforce-eager"),
        enable_sleep_mode=_switch(parsed, "--enable-sleep-mode"),
        api_key=api_key.values[0] if api_key and api_key.values else None,
        kv_cache_memory_bytes=_human_int("--kv-cache-memory-bytes", kv_text) if kv_text else None,
    )


def _help_args() -> ServeArgs:
    return ServeArgs(Path("."), (), None, 0, DEFAULT_FRACTION, None, 0, "auto", None, False,
                     False, None, None, help_requested=True)  # fmt: skip
