"""The ``vllm serve`` command line and environment for one provider, as an argument list.

Pure: the provider, the planned fraction, the local snapshot and the GPU's facts go in, an
argv and an environment come out; nothing is started here (``gpumgr.supervisor`` does that).
Every flag emitted is one vLLM 0.33.0 accepts (``gpumgr.engines.vllm_flags``), and a provider's
``extra_args`` are checked against the same list, so a typo is a config error at plan time and
not a crash loop at 3 a.m. The log readers (measured memory, out-of-memory recognisers) live in
``gpumgr.engines.vllm_log`` and are re-exported here for callers that think "vLLM".
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpumgr.config.registry import Provider
from gpumgr.config.settings import VllmSettings
from gpumgr.engines.vllm_flags import ServeArgsError, canonical_flag, parse_serve_args
from gpumgr.engines.vllm_log import (
    OomFinding,
    OomKind,
    VllmMemoryReport,
    find_oom,
    is_oom,
    last_error_line,
    parse_memory_report,
)
from gpumgr.errors import InputError
from gpumgr.sd_notify import child_environment

__all__ = [
    "GpuFacts",
    "OomFinding",
    "OomKind",
    "VllmLaunch",
    "VllmMemoryReport",
    "build_vllm_launch",
    "find_oom",
    "is_oom",
    "last_error_line",
    "parse_memory_report",
    "resolve_vllm_command",
    "validate_extra_args",
]

LOOPBACK = "127.0.0.1"
AWQ_MARLIN = "awq_marlin"
MIN_BF16_CAPABILITY = (8, 0)
"""bf16 needs Ampere (compute capability 8.0); older cards (Turing 7.5) must run ``--dtype half``."""


MANAGED_FLAGS: dict[str, str] = {
    "--host": "the daemon always binds vLLM to 127.0.0.1",
    "--port": "the port comes from the provider's base_url",
    "--gpu-memory-utilization": "the planner computes the fraction",
    "--served-model-name": "served names come from the provider's models and aliases",
    "--model": "the model comes from the provider's models",
    "--max-model-len": "use the provider key max_model_len",
    "--max-num-seqs": "use the provider key max_num_seqs",
    "--quantization": "use the provider key quantization",
    "-q": "use the provider key quantization",
    "--enforce-eager": "use the provider key enforce_eager",
    "--enable-sleep-mode": "use the provider key enable_sleep_mode",
    "--trust-remote-code": "use the provider key trust_remote_code",
    "--api-key": "secrets never go on the command line; name the variable in env_var",
}
"""Flags gpumgr sets itself: in ``extra_args`` they would silently override the plan
(argparse keeps the last occurrence), so they are refused with the key to use instead."""

_KNOWN_QUANTIZATIONS = frozenset(
    {
        "awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "bitsandbytes", "gguf",
        "compressed-tensors", "modelopt", "modelopt_fp4", "experts_int8", "mxfp4", "torchao",
        "inc", "quark", "moe_wna16", "fbgemm_fp8", "fp_quant", "petit_nvfp4",
    }
)  # fmt: skip
"""Values of ``--quantization`` that a registry's descriptive ``quantization:`` may hold
verbatim. Anything else there (``4-bit``, ``Q4_K_M``) is description, and vLLM detects the
method from the checkpoint's ``config.json`` by itself."""


@dataclass(frozen=True)
class GpuFacts:
    """What the command line needs to know about the card: its UUID and compute capability."""

    uuid: str
    compute_capability: str = "7.5"

    @property
    def capability(self) -> tuple[int, int]:
        major, _, minor = self.compute_capability.partition(".")
        return int(major), int(minor or 0)


@dataclass(frozen=True)
class VllmLaunch:
    """One process to start: the exact argument list and the complete environment."""

    argv: list[str]
    env: dict[str, str] = field(repr=False)

    @property
    def display_env(self) -> dict[str, str]:
        """The variables gpumgr set itself (for ``gpumgr plan --json``); never holds secrets."""
        return {k: v for k, v in self.env.items() if k in _DISPLAYED_ENV}


_DISPLAYED_ENV = ("CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "VLLM_SERVER_DEV_MODE",
                  "VLLM_NO_USAGE_STATS")  # fmt: skip


def _default_is_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def resolve_vllm_command(
    provider: Provider,
    settings: VllmSettings,
    command: Sequence[str] | None = None,
    is_executable: Callable[[Path], bool] = _default_is_file,
) -> list[str]:
    """The command that precedes ``serve``: most specific wins.

    ``command`` (a list prefix such as ``[sys.executable, "-m", "gpumgr.sim.vllm"]``, used for
    simulation) > the provider's ``vllm_bin`` > ``<location>/bin/vllm`` when ``location`` is a
    virtualenv holding one > ``gpumgr.yaml``'s ``vllm.command`` (shell-split, default ``vllm``).
    """
    if command:
        return list(command)
    if provider.vllm_bin:
        return [provider.vllm_bin]
    if provider.location:
        candidate = Path(provider.location).expanduser() / "bin" / "vllm"
        if is_executable(candidate):
            return [str(candidate)]
    parts = shlex.split(settings.command)
    if not parts:
        raise InputError("gpumgr.yaml: vllm.command must not be empty")
    return parts


def validate_extra_args(provider_name: str, extra_args: Sequence[str]) -> list[str]:
    """The provider's ``extra_args`` in canonical spelling, or an ``InputError`` naming the flag.

    Every flag must be one ``vllm serve`` 0.33.0 accepts; flags gpumgr manages are refused with
    the provider key to use instead; loose values (no flag before them) are refused too.
    """
    where = f"providers.{provider_name}.extra_args"
    try:
        parsed = parse_serve_args(list(extra_args))
    except ServeArgsError as exc:
        raise InputError(f"{where}: vllm serve 0.33.0 would reject these: {exc}") from None
    if parsed.positionals:
        raise InputError(f"{where}: {parsed.positionals[0]!r} is not a flag nor a flag's value")
    out: list[str] = []
    for arg in parsed.flags:
        reason = MANAGED_FLAGS.get(arg.flag)
        if reason:
            raise InputError(f"{where}: {arg.flag} is set by gpumgr ({reason})")
        out.extend(arg.tokens())
    return out


def _quantization(provider: Provider, checkpoint_method: str | None) -> str | None:
    """A provider-level ``quantization`` (vLLM's knob) as given; ``awq_marlin`` for AWQ
    checkpoints (Marlin is the fast AWQ kernel, Turing included); a model's descriptive value only when vLLM
    knows it; else nothing, and vLLM reads the checkpoint's own ``quantization_config``."""
    if provider.quantization:
        lowered = provider.quantization.lower()
        return lowered if lowered in _KNOWN_QUANTIZATIONS else provider.quantization
    model = provider.vllm_model
    described = (model.quantization or "").strip().lower() if model else ""
    if "awq" in described or (checkpoint_method or "").lower() == "awq":
        return AWQ_MARLIN
    if described in _KNOWN_QUANTIZATIONS:
        return described
    return None


def _format_fraction(fraction: float) -> str:
    """At most 4 decimals, rounded DOWN: rounding up could ask vLLM for more than planned."""
    if not 0 < fraction <= 1:
        raise InputError(f"--gpu-memory-utilization must be in (0, 1] (got {fraction})")
    # round() first: 0.57 * 10_000 is 5699.999999999999 in binary floating point
    ten_thousandths = math.floor(round(fraction * 10_000, 6))
    return f"{ten_thousandths / 10_000:.4f}".rstrip("0").rstrip(".")


def build_vllm_launch(
    provider: Provider,
    *,
    fraction: float,
    snapshot_dir: Path,
    gpu: GpuFacts,
    settings: VllmSettings,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    command: Sequence[str] | None = None,
    base_env: Mapping[str, str] | None = None,
    withheld_env: Collection[str] = (),
    checkpoint_quantization: str | None = None,
    is_executable: Callable[[Path], bool] = _default_is_file,
) -> VllmLaunch:
    """The argv and environment that start ``provider`` with the planned ``fraction``.

    ``max_model_len``/``max_num_seqs`` come from the plan, else the provider; both are always
    passed because vLLM's defaults (the model's full context, 256 or 1024 sequences) are what
    the planner did not plan for. ``checkpoint_quantization`` is ``ModelDims.quantization_method``
    of the snapshot. ``base_env`` defaults to ``os.environ``; secrets reach vLLM through the
    environment only (``VLLM_API_KEY`` from the provider's ``env_var``), never the argv.
    """
    if not provider.is_vllm:
        raise InputError(f"providers.{provider.name}: type is {provider.type}, not vllm")
    port = provider.port
    if port is None:
        raise InputError(f"providers.{provider.name}.base_url: a vLLM provider needs a port")
    names = provider.served_names
    if not names:
        raise InputError(f"providers.{provider.name}.models: a vLLM provider needs a model")
    model_len = max_model_len or provider.max_model_len
    if model_len is None and provider.vllm_model is not None:
        model_len = provider.vllm_model.context_length
    if model_len is None:
        raise InputError(f"providers.{provider.name}: max_model_len is not set and not planned")
    seqs = max_num_seqs or provider.max_num_seqs
    if seqs is None:
        raise InputError(f"providers.{provider.name}: max_num_seqs is not set and not planned")
    extra = validate_extra_args(provider.name, provider.extra_args)

    argv = resolve_vllm_command(provider, settings, command, is_executable)
    argv += ["serve", str(snapshot_dir), "--served-model-name", *names]
    argv += ["--host", LOOPBACK, "--port", str(port)]
    argv += ["--gpu-memory-utilization", _format_fraction(fraction)]
    argv += ["--max-model-len", str(model_len), "--max-num-seqs", str(seqs)]
    if gpu.capability < MIN_BF16_CAPABILITY and "--dtype" not in extra:
        argv += ["--dtype", "half"]
    quantization = _quantization(provider, checkpoint_quantization)
    if quantization:
        argv += ["--quantization", quantization]
    if provider.enforce_eager:
        argv.append("--enforce-eager")
    if provider.trust_remote_code:
        argv.append("--trust-remote-code")
    if provider.enable_sleep_mode:
        argv.append("--enable-sleep-mode")
    argv += extra

    env = child_environment(os.environ if base_env is None else base_env)
    env.pop("VLLM_API_KEY", None)  # only the provider's own key, if any, below
    env["CUDA_VISIBLE_DEVICES"] = gpu.uuid
    env["HF_HUB_OFFLINE"] = "1"
    env["VLLM_NO_USAGE_STATS"] = "1"
    if provider.enable_sleep_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    if provider.requires_api_key and provider.env_var:
        key = env.get(provider.env_var)
        if not key:
            raise InputError(
                f"providers.{provider.name}.env_var: ${provider.env_var} is not set "
                "(the vLLM server needs its API key)"
            )
        env["VLLM_API_KEY"] = key
    # The server runs offline and needs no other secret: not the hub token, not the keys of
    # other providers (``withheld_env``: every provider's env_var), not its own under its name.
    for name in (*HUB_TOKEN_ENV, *withheld_env):
        env.pop(name, None)
    return VllmLaunch(argv=argv, env=env)


HUB_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")


def emitted_flags(argv: Sequence[str]) -> list[str]:
    """The flags of a built argv (everything after ``serve``), canonical: for tests and plans."""
    serve = list(argv).index("serve")
    parsed = parse_serve_args(list(argv)[serve + 1 :])
    return [canonical_flag(a.flag) for a in parsed.flags]
