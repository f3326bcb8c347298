"""Which known vLLM release a ``vllm --version`` string means, and what differs between them.

Pure: a version string goes in; the flag table to check against, whether it was known exactly,
and the release's traits come out. An unknown newer release gets the newest known table (vLLM
adds flags far more often than it removes them) and a doctor warning; an unknown older one gets
the oldest table, also with a warning. ``KNOWN_RELEASES`` lists the generated modules: add one
after ``scripts/gen_vllm_tables.py`` writes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType

from gpumgr.vllm_tables import v0_33_0, v0_34_0
from gpumgr.vllm_tables.parser import FlagTable

Version = tuple[int, int, int]

RELEASE_MODULES: tuple[ModuleType, ...] = (v0_33_0, v0_34_0)
"""The generated table modules, oldest first."""

EXTENSIBLE_KV_CACHE_FROM: Version = (0, 34, 0)
"""From 0.34 the KV cache is sized after warm-up ("extensible", on by default on CUDA):
``--gpu-memory-utilization`` is a cap, and the start-up refusal for too little free memory is
gone unless the extensible cache is off (``--no-enable-extensible-kv-cache``,
``--kv-cache-memory-bytes`` or ``--num-gpu-blocks-override``)."""
V2_RUNNER_ONLY_FROM: Version = (0, 34, 0)
"""0.34 deletes the V1 model runner; no public Turing (cc 7.5) run of the V2 runner exists yet."""
FP8_KV_BROKEN_BELOW_SM89_FROM: Version = (0, 24, 0)
"""From 0.24 an fp8 KV cache fails on compute capability < 8.9: the fallback Triton attention
backend needs SM89+ (vllm#47549, reported on a Quadro RTX 8000; no fix merged)."""
DEFAULT_RELEASE = "0.33.0"

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str | None) -> Version | None:
    """``0.34.0``, ``0.34.1rc1``, ``vllm 0.34.0.dev3+gabc`` → (0, 34, x); None when no version."""
    if not text:
        return None
    m = _VERSION.search(text)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def dotted(v: Version) -> str:
    return ".".join(str(x) for x in v)


_TABLES: dict[str, FlagTable] = {}


def table(version: str) -> FlagTable:
    """The flag table of a known release (built once)."""
    if version not in _TABLES:
        module = next(m for m in RELEASE_MODULES if m.VLLM_VERSION == version)
        _TABLES[version] = FlagTable.of(module)
    return _TABLES[version]


KNOWN_VERSIONS: tuple[str, ...] = tuple(str(m.VLLM_VERSION) for m in RELEASE_MODULES)
NEWEST_KNOWN = KNOWN_VERSIONS[-1]


@dataclass(frozen=True)
class Release:
    """What gpumgr knows of the vLLM a provider runs."""

    reported: str | None
    """What ``vllm --version`` printed (None: unknown, the default release assumed)."""
    table_version: str
    """The known release whose flag table applies."""
    exact: bool
    """The reported release has a table of its own (or the same minor's, e.g. 0.34.1)."""

    @property
    def version(self) -> Version:
        return parse_version(self.reported) or parse_version(self.table_version) or (0, 0, 0)

    @property
    def flags(self) -> FlagTable:
        return table(self.table_version)

    @property
    def newer_than_known(self) -> bool:
        return self.version > (parse_version(NEWEST_KNOWN) or (0, 0, 0)) and not self.exact

    @property
    def extensible_kv_cache(self) -> bool:
        """The release sizes the KV cache after warm-up by default (0.34+)."""
        return self.version >= EXTENSIBLE_KV_CACHE_FROM

    @property
    def v2_runner_only(self) -> bool:
        return self.version >= V2_RUNNER_ONLY_FROM

    @property
    def fp8_kv_needs_sm89(self) -> bool:
        return self.version >= FP8_KV_BROKEN_BELOW_SM89_FROM

    @property
    def label(self) -> str:
        if self.reported is None:
            return f"{self.table_version} (assumed)"
        if self.reported == self.table_version or self.exact:
            return self.reported
        return f"{self.reported} (checked as {self.table_version})"


def release_for(reported: str | None) -> Release:
    """The release whose table and traits apply to what ``vllm --version`` printed."""
    v = parse_version(reported)
    if v is None:
        return Release(None, DEFAULT_RELEASE, False)
    known = [(parse_version(k) or (0, 0, 0), k) for k in KNOWN_VERSIONS]
    same_minor = [k for kv, k in known if kv[:2] == v[:2] and kv <= v]
    if same_minor:
        return Release(reported, same_minor[-1], True)
    older = [k for kv, k in known if kv <= v]
    if older:
        return Release(reported, older[-1], False)
    return Release(reported, KNOWN_VERSIONS[0], False)
