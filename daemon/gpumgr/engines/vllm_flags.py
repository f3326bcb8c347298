"""``vllm serve``'s parser, re-exported for the engine code: it lives in the leaf package
``gpumgr.vllm_tables`` (so ``gpumgr.config`` can use it without importing ``gpumgr.engines``)."""

from __future__ import annotations

from gpumgr.vllm_tables.parser import (
    DEFAULT_TABLE,
    DEPRECATED_QUANTIZATION_METHODS,
    FLAGS,
    FLAGS_BY_DEST,
    KNOWN_FLAGS,
    MANAGED_DESTS,
    QUANTIZATION_METHODS,
    VLLM_VERSION,
    Arity,
    FlagSpec,
    FlagTable,
    ParsedServeArgs,
    ServeArg,
    ServeArgsError,
    canonical_flag,
    check_extra_args,
    parse_serve_args,
)

__all__ = [
    "Arity", "DEFAULT_TABLE", "DEPRECATED_QUANTIZATION_METHODS", "FLAGS", "FLAGS_BY_DEST",
    "FlagSpec", "FlagTable", "KNOWN_FLAGS", "MANAGED_DESTS", "ParsedServeArgs",
    "QUANTIZATION_METHODS", "ServeArg", "ServeArgsError", "VLLM_VERSION", "canonical_flag",
    "check_extra_args", "parse_serve_args",
]  # fmt: skip
