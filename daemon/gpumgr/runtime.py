"""The daemon's environment, read once at its entry point, and what of it an engine may see.

``RuntimeEnv`` is a frozen copy of ``os.environ`` taken where the process starts (``gpumgr
daemon``) and passed down, so no module deep inside reads or writes the process environment on
its own; tests build one from a plain dict. Secrets are *not* copied out of it at start: each is
looked up by name when it is needed (``secret``), which re-reads a systemd credential file each
time, so a rotated credential is picked up by the next reload or engine start.

``engine_environment`` is the allow-list for an engine's inherited environment. An engine gets
what a Python/CUDA program needs (``PATH``, ``HOME``, the locale, ``CUDA_*``, ``NVIDIA_*``,
``HF_*``, ``VLLM_*``, ``NCCL_*``, ``TRITON_*``, ``TORCH*``, ``XDG_*``, the simulator's own
``GPUMGR_SIM_*``), never a name that looks like a secret (``*TOKEN*``, ``*KEY*``, ``*SECRET*``,
``*PASSWORD*``…) even under an allowed prefix, and nothing else: not ``GPUMGR_CONTROL_TOKEN``,
not another provider's key, not a cloud credential the daemon's unit happens to carry. What the
provider declares (its ``env:`` mapping, its key when ``requires_api_key``) and what gpumgr sets
itself (``CUDA_VISIBLE_DEVICES``, ``HF_HUB_OFFLINE``, a spawn marker…) are added *after* this
filter by the launch builder, so they are never filtered out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gpumgr.secrets import read_secret

ENGINE_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH",
    "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "GPUMGR_SPAWN_MARKER",
})
"""Inherited by name. ``PYTHONPATH``: the engine is a Python program installed next to the
daemon's (and the simulated engine must import gpumgr); ``LD_LIBRARY_PATH``: where a unit
points the CUDA libraries; ``OMP_NUM_THREADS``: the usual CPU-thread cap of a vLLM host.
``GPUMGR_SPAWN_MARKER``: gpumgr's own. Anything else an engine needs is declared in the
provider's ``env:``."""

ENGINE_ENV_PREFIXES = (
    "LC_", "CUDA_", "NVIDIA_", "HF_", "VLLM_", "NCCL_", "TRITON_", "TORCH", "XDG_",
)
"""Inherited by prefix: the tuning variables of the CUDA stack, the hub cache and vLLM itself."""

SIMULATOR_PREFIX = "GPUMGR_SIM_"
"""The simulated engine's own switches (``GPUMGR_SIM_TOKEN_DELAY_S`` is a delay, not a token)."""

_SECRET_LOOKING = re.compile(r"TOKEN|(^|_)KEY($|_)|SECRET|PASSW|CREDENTIAL|(^|_)AUTH($|_)")
"""A name under an allowed prefix that still looks like a secret (``HF_TOKEN``,
``VLLM_API_KEY``, ``HF_TOKEN_PATH``): dropped unless the provider declares it."""


def engine_may_inherit(name: str) -> bool:
    """Whether an engine inherits ``name`` from the daemon's environment."""
    if name in ENGINE_ENV_NAMES or name.startswith(SIMULATOR_PREFIX):
        return True
    return name.startswith(ENGINE_ENV_PREFIXES) and not _SECRET_LOOKING.search(name)


def engine_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the daemon's environment an engine inherits (the allow-list above)."""
    return {k: v for k, v in environ.items() if engine_may_inherit(k)}


@dataclass(frozen=True)
class RuntimeEnv:
    """The process environment, read once (``from_process``) and immutable afterwards."""

    environ: Mapping[str, str]

    @classmethod
    def from_process(cls) -> RuntimeEnv:
        """The one read of ``os.environ`` (at the CLI's entry into the daemon)."""
        return cls.of(os.environ)

    @classmethod
    def of(cls, environ: Mapping[str, str]) -> RuntimeEnv:
        return cls(MappingProxyType(dict(environ)))

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.environ.get(name, default)

    def secret(self, name: str | None) -> str | None:
        """The secret ``name`` (``$NAME``, else the systemd credential, re-read now)."""
        return read_secret(name, self.environ)

    @property
    def for_engines(self) -> dict[str, str]:
        """What every engine inherits (``engine_environment``)."""
        return engine_environment(self.environ)
