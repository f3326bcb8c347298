"""The ``vllm serve`` command line and environment for one provider, as an argument list.

Pure: the provider, the planned fraction, the local snapshot and the GPU's facts go in, an
argv and an environment come out; nothing is started here (``gpumgr.supervisor`` does that).
Every flag emitted is one the provider's vLLM release accepts (``gpumgr.vllm_tables``: the
release ``vllm --version`` reported, else the provider's pin, else 0.33.0), and a provider's
``extra_args`` are checked against the same release's list, so a typo is a config error at plan time and
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
from gpumgr.secrets import read_secret
from gpumgr.engines.vllm_flags import (
    DEFAULT_TABLE,
    FlagTable,
    ServeArgsError,
    canonical_flag,
    check_extra_args,
    parse_serve_args,
)
from gpumgr.vllm_tables.releases import Release, release_for
from gpumgr.vllm_tables.rules import card_findings
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
from gpumgr.runtime import engine_environment
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

AWQ_MARLIN = "awq_marlin"
MIN_BF16_CAPABILITY = (8, 0)
"""bf16 needs Ampere (compute capability 8.0); older cards (Turing 7.5) must run ``--dtype half``."""

_COMPATIBLE_KERNELS = {
    "awq": frozenset({"awq", "awq_marlin", "moe_wna16"}),
    "gptq": frozenset({"gptq", "gptq_marlin", "moe_wna16"}),
}
"""``--quantization`` values vLLM accepts for a checkpoint whose ``config.json`` names the key's
method (the kernel may differ from the method); any other method must equal the checkpoint's."""


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


def validate_extra_args(
    provider_name: str, extra_args: Sequence[str], table: FlagTable = DEFAULT_TABLE
) -> list[str]:
    """The provider's ``extra_args`` in canonical spelling, or an ``InputError`` naming the flag.

    The same check ``gpumgr validate`` and a reload run (``vllm_flags.check_extra_args``); it is
    repeated here because a launch must never trust that the file was validated.
    """
    where = f"providers.{provider_name}.extra_args"
    try:
        return check_extra_args(list(extra_args), table)
    except ServeArgsError as exc:
        if exc.index is not None:
            where += f"[{exc.index}]"
        raise InputError(f"{where}: {exc}") from None


def _quantization(
    provider: Provider, checkpoint_method: str | None, table: FlagTable = DEFAULT_TABLE
) -> str | None:
    """The ``--quantization`` to pass, or None to let vLLM read the checkpoint's own.

    A provider-level ``quantization`` is vLLM's knob: it must be a vLLM method (``gpumgr
    validate`` checks that) and, when the checkpoint's ``config.json`` names a method, one that
    fits it (else ``InputError``: vLLM would refuse to start). A model's ``quantization`` is
    the registry's description: "AWQ" means ``awq_marlin`` (the fast AWQ kernel, Turing
    included) and a vLLM method name is passed as such, but only when the checkpoint does not
    say otherwise; anything else ("4-bit", "Q4_K_M") is description only.
    """
    ckpt = (checkpoint_method or "").strip().lower() or None
    methods = table.quantization_methods
    if provider.quantization:
        requested = provider.quantization.strip().lower()
        if requested not in methods:
            raise InputError(
                f"providers.{provider.name}.quantization: {provider.quantization!r} is not a "
                f"quantization method of vLLM {table.version}"
            )
        if ckpt and not _fits_checkpoint(requested, ckpt):
            raise InputError(
                f"providers.{provider.name}.quantization: {requested!r} does not fit the "
                f"checkpoint, whose config.json says {ckpt!r} (vLLM would refuse to start); "
                "remove the key to let vLLM use the checkpoint's method"
            )
        return requested
    model = provider.vllm_model
    described = (model.quantization or "").strip().lower() if model else ""
    if described == "awq" or ("awq" in described and described not in methods):
        described = AWQ_MARLIN
    if described in methods:
        if ckpt is None or _fits_checkpoint(described, ckpt):
            return described
        return None  # the description is wrong; the checkpoint knows its own method
    if ckpt == "awq":
        return AWQ_MARLIN
    return None


def _fits_checkpoint(requested: str, checkpoint: str) -> bool:
    return requested == checkpoint or requested in _COMPATIBLE_KERNELS.get(checkpoint, ())


def _format_fraction(fraction: float) -> str:
    """At most 4 decimals, rounded DOWN: rounding up could ask vLLM for more than planned."""
    if not 0 < fraction <= 1:
        raise InputError(f"--gpu-memory-utilization must be in (0, 1] (got {fraction})")
    # round() first: 0.57 * 10_000 is 5699.999999999999 in binary floating point
    ten_thousandths = math.floor(round(fraction * 10_000, 6))
    return f"{ten_thousandths / 10_000:.4f}".rstrip("0").rstrip(".")


def sleep_mode(provider: Provider, settings: VllmSettings) -> bool:
    """Whether the engine runs with vLLM's sleep mode (a swap then sleeps it instead of
    stopping it): the provider's ``swap_mode`` (else ``vllm.swap_mode``) or its
    ``enable_sleep_mode``."""
    return provider.enable_sleep_mode or (provider.swap_mode or settings.swap_mode) == "sleep"


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
    release: Release | None = None,
) -> VllmLaunch:
    """The argv and environment that start ``provider`` with the planned ``fraction``.

    ``max_model_len``/``max_num_seqs`` come from the plan, else the provider; both are always
    passed because vLLM's defaults (the model's full context, 256 or 1024 sequences) are what
    the planner did not plan for. ``checkpoint_quantization`` is ``ModelDims.quantization_method``
    of the snapshot. ``base_env`` defaults to ``os.environ``; secrets reach vLLM through the
    environment only (``VLLM_API_KEY`` from the provider's ``env_var``), never the argv.
    ``release`` is the provider's vLLM (``engines.vllm_version``); None: its pin, else 0.33.0.
    """
    if release is None:
        release = release_for(provider.vllm_version)
    table = release.flags
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
    extra = validate_extra_args(provider.name, provider.extra_args, table)

    argv = resolve_vllm_command(provider, settings, command, is_executable)
    argv += ["serve", str(snapshot_dir), "--served-model-name", *names]
    argv += ["--host", provider.bind_host, "--port", str(port)]
    argv += ["--gpu-memory-utilization", _format_fraction(fraction)]
    argv += ["--max-model-len", str(model_len), "--max-num-seqs", str(seqs)]
    if gpu.capability < MIN_BF16_CAPABILITY and "--dtype" not in extra:
        argv += ["--dtype", "half"]
    quantization = _quantization(provider, checkpoint_quantization, table)
    for finding in card_findings(extra, quantization, release, gpu.capability):
        if finding.level == "error":  # the engine would die in its first forward pass
            raise InputError(f"providers.{provider.name}: {finding.message}; {finding.fix}")
    if quantization:
        argv += ["--quantization", quantization]
    if provider.enforce_eager:
        argv.append("--enforce-eager")
    if provider.trust_remote_code:
        argv.append("--trust-remote-code")
    if sleep_mode(provider, settings):
        argv.append("--enable-sleep-mode")
    argv += extra

    # the allow-list (gpumgr.runtime): no control token, no other provider's key, no stray secret
    env = child_environment(engine_environment(os.environ if base_env is None else base_env))
    env.update(provider.env)  # the provider's own tuning (names checked: never gpumgr's, no secret)
    env.pop("VLLM_API_KEY", None)  # only the provider's own key, if any, below
    env["CUDA_VISIBLE_DEVICES"] = gpu.uuid
    env["HF_HUB_OFFLINE"] = "1"
    env["VLLM_NO_USAGE_STATS"] = "1"
    if sleep_mode(provider, settings):
        env["VLLM_SERVER_DEV_MODE"] = "1"  # the sleep endpoints; the engine binds loopback only
    if provider.requires_api_key and provider.env_var:
        key = read_secret(provider.env_var, os.environ if base_env is None else base_env)
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
