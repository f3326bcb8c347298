"""Reading a vLLM server's log: measured memory at start, out-of-memory failures, last error.

Pure functions over log lines. vLLM logs what it measured while starting (weights, activation
peak, CUDA graphs, the KV cache left over); those figures let the next plan use real numbers
instead of estimates. Its out-of-memory failures come in four shapes that call for different
reactions, so ``find_oom`` says which one it saw: a start refused because other processes hold
memory is worth retrying once they are gone; a slice too small for the weights or for one
request at ``max_model_len`` is not, not with the same slice (DESIGN.md §3, issue 5).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

GIB = 1024**3

# The prefix vLLM puts on lines from its engine process: "(EngineCore_DP0 pid=4242) ".
_PROCESS_PREFIX = re.compile(r"^\([A-Za-z_]+\d* pid=\d+\)\s*")
_NUM = r"(\d[\d,]*(?:\.\d+)?)"

_WEIGHTS = re.compile(rf"Model loading took {_NUM} ?GiB")
_KV_MEMORY = re.compile(rf"Available KV cache memory: {_NUM} ?GiB")
_KV_TOKENS = re.compile(rf"GPU KV cache size: {_NUM} tokens")
_CONCURRENCY = re.compile(rf"Maximum concurrency for {_NUM} tokens per request: {_NUM} ?x")
_ACTIVATION = re.compile(
    rf"(?:torch peak memory increase|PyTorch activation peak memory takes):? {_NUM} ?GiB"
)
_GRAPHS = re.compile(rf"Graph capturing finished in .*?took {_NUM} ?GiB")
# vLLM 0.34, extensible KV cache: "GPU KV cache size" is the reservation (the cap); the blocks
# really committed after warm-up come later (vllm/v1/worker/extensible_kv_cache.py, and the
# "Memory after warmup" line of vllm/v1/worker/utils.py).
_EXTENDED = re.compile(rf"Extended KV cache to {_NUM} blocks \({_NUM} ?GiB\)")
_AFTER_WARMUP = re.compile(
    rf"Memory after warmup: {_NUM} ?GiB free, {_NUM} ?GiB committed to the KV cache.*?"
    rf"{_NUM} KV cache blocks \({_NUM} ?GiB\) fit within the requested {_NUM} ?GiB"
)

_FREE_AT_START = re.compile(
    rf"Free memory on device (\S+) \({_NUM}/{_NUM} GiB\) on startup is less than desired "
    rf"GPU memory utilization \({_NUM}, {_NUM} GiB\)"
)
_NO_CACHE_BLOCKS = re.compile(r"No available memory for the cache blocks")
_KV_TOO_SMALL = re.compile(
    rf"max seq len \({_NUM}\).*?\({_NUM} ?GiB KV cache\) is needed, which is larger than the "
    rf"available KV cache memory \({_NUM} ?GiB\)"
    rf"(?:.*?estimated maximum model length is {_NUM})?"
)
_CUDA_OOM = re.compile(
    r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory|cudaErrorMemoryAllocation"
)
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)):\s*\S")
_ERROR_LEVEL = re.compile(r"^(?:ERROR|CRITICAL)\b")


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _strip(line: str) -> str:
    return _PROCESS_PREFIX.sub("", line.rstrip("\r\n")).strip()


@dataclass(frozen=True)
class VllmMemoryReport:
    """What vLLM measured while starting; ``None`` where its log did not say."""

    weights_bytes: int | None = None
    activation_bytes: int | None = None
    cuda_graph_bytes: int | None = None
    kv_cache_bytes: int | None = None
    kv_cache_tokens: int | None = None
    max_model_len: int | None = None
    max_concurrency: float | None = None
    committed_blocks: int | None = None
    """vLLM 0.34 (extensible KV cache): the blocks committed after warm-up; when present, the
    KV cache really held is these blocks, not the "GPU KV cache size" reservation."""
    committed_kv_bytes: int | None = None
    free_after_warmup_bytes: int | None = None

    def actual_kv_tokens(self, block_size: int = 16) -> int | None:
        """The KV cache the engine really got, in tokens: the committed blocks when the log has
        them (0.34), else the "GPU KV cache size" line (0.33 sizes once, before serving)."""
        if self.committed_blocks is not None:
            return self.committed_blocks * block_size
        return self.kv_cache_tokens

    @property
    def complete(self) -> bool:
        """True once the engine logged its KV cache: the start's measurements are all in."""
        return self.kv_cache_bytes is not None and self.kv_cache_tokens is not None


def parse_memory_report(lines: Iterable[str]) -> VllmMemoryReport:
    """The last value of each measurement found in ``lines`` (a restart logs them anew)."""
    found: dict[str, float] = {}
    for raw in lines:
        line = _strip(raw)
        if m := _WEIGHTS.search(line):
            found["weights"] = _num(m.group(1))
        if m := _ACTIVATION.search(line):
            found["activation"] = _num(m.group(1))
        if m := _GRAPHS.search(line):
            found["graphs"] = _num(m.group(1))
        if m := _KV_MEMORY.search(line):
            found["kv"] = _num(m.group(1))
        if m := _KV_TOKENS.search(line):
            found["tokens"] = _num(m.group(1))
        if m := _CONCURRENCY.search(line):
            found["len"] = _num(m.group(1))
            found["concurrency"] = _num(m.group(2))
        if m := _AFTER_WARMUP.search(line):
            found["free_after"] = _num(m.group(1))
            found["blocks"] = _num(m.group(3))
            found["committed"] = _num(m.group(4))
        if m := _EXTENDED.search(line):
            found["blocks"] = _num(m.group(1))
            found["committed"] = _num(m.group(2))

    def gib(key: str) -> int | None:
        return round(found[key] * GIB) if key in found else None

    return VllmMemoryReport(
        weights_bytes=gib("weights"),
        activation_bytes=gib("activation"),
        cuda_graph_bytes=gib("graphs"),
        kv_cache_bytes=gib("kv"),
        kv_cache_tokens=int(found["tokens"]) if "tokens" in found else None,
        max_model_len=int(found["len"]) if "len" in found else None,
        max_concurrency=found.get("concurrency"),
        committed_blocks=int(found["blocks"]) if "blocks" in found else None,
        committed_kv_bytes=gib("committed"),
        free_after_warmup_bytes=gib("free_after"),
    )


class OomKind(StrEnum):
    FREE_MEMORY_AT_START = "free_memory_at_start"
    """Others held memory when it started: retry once they are gone, or plan a smaller slice."""
    NO_KV_CACHE = "no_kv_cache"
    """Weights + activations + graphs filled the slice: the slice is too small for the model."""
    KV_TOO_SMALL = "kv_too_small"
    """The KV cache cannot hold one request at ``max_model_len``: bigger slice or shorter length."""
    CUDA_OOM = "cuda_oom"
    """An allocation failed at run time (or another process grabbed memory while it started)."""


@dataclass(frozen=True)
class OomFinding:
    """One recognised out-of-memory failure and the line that showed it (numbers in GiB)."""

    kind: OomKind
    line: str
    free_gib: float | None = None
    total_gib: float | None = None
    fraction: float | None = None
    requested_gib: float | None = None
    needed_kv_gib: float | None = None
    available_kv_gib: float | None = None
    estimated_max_model_len: int | None = None

    @property
    def same_slice_would_fail_again(self) -> bool:
        """Everything but a start refused for memory that others held: that one may pass later."""
        return self.kind is not OomKind.FREE_MEMORY_AT_START


def _finding(line: str) -> OomFinding | None:
    if m := _FREE_AT_START.search(line):
        return OomFinding(
            OomKind.FREE_MEMORY_AT_START,
            line,
            free_gib=_num(m.group(2)),
            total_gib=_num(m.group(3)),
            fraction=_num(m.group(4)),
            requested_gib=_num(m.group(5)),
        )
    if _NO_CACHE_BLOCKS.search(line):
        return OomFinding(OomKind.NO_KV_CACHE, line)
    if m := _KV_TOO_SMALL.search(line):
        return OomFinding(
            OomKind.KV_TOO_SMALL,
            line,
            needed_kv_gib=_num(m.group(2)),
            available_kv_gib=_num(m.group(3)),
            estimated_max_model_len=int(_num(m.group(4))) if m.group(4) else None,
        )
    if _CUDA_OOM.search(line):
        return OomFinding(OomKind.CUDA_OOM, line)
    return None


def find_oom(lines: Iterable[str]) -> OomFinding | None:
    """The last out-of-memory failure in ``lines`` (the tail of one start's log), if any.

    The specific messages win over the generic CUDA one: vLLM's "no memory for the cache
    blocks" is often followed by a traceback that also mentions memory.
    """
    best: OomFinding | None = None
    for raw in lines:
        found = _finding(_strip(raw))
        if found is None:
            continue
        if best is None or found.kind is not OomKind.CUDA_OOM or best.kind is OomKind.CUDA_OOM:
            best = found
    return best


def is_oom(lines: Iterable[str]) -> bool:
    """True when the log shows that the engine failed for lack of GPU memory."""
    return find_oom(lines) is not None


def last_error_line(lines: Iterable[str]) -> str | None:
    """The line that best says why the engine died, for a backend's ``detail``.

    The last Python exception line (``ValueError: …``) wins; else the last ERROR-level line.
    """
    exception: str | None = None
    error: str | None = None
    for raw in lines:
        line = _strip(raw)
        if _EXCEPTION_LINE.match(line):
            exception = line
        elif _ERROR_LEVEL.match(line):
            error = line
    return exception or error


def vllm_last_error(lines: list[str]) -> str:
    """``last_error_line``, else the last line (the supervisor's ``detail`` is never empty)."""
    return last_error_line(lines) or (lines[-1].strip() if lines else "")
