"""Pure checks of the host: driver and cards, vLLM executables, ports, systemd, the daemon, LiteLLM.

Each function takes facts already read (see ``gpumgr.doctor.runner``) and returns ``Check``
values; none does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from gpumgr.config.cloud_key import CLOUD_KEY_REF, SAFE_NAME, keyless_beside_cloud_key
from gpumgr.doctor import Check, fail, ok, warn
from gpumgr.gpu import GpuInfo, GpuInventory

MIN_DRIVER_MAJOR = 580
"""vLLM >= 0.20 ships CUDA 13 wheels, which need an NVIDIA driver >= 580 (DESIGN.md §3)."""

MIN_COMPUTE = (7, 0)
"""vLLM's CUDA build targets compute capability 7.0 (Volta) and newer."""

BF16_COMPUTE = (8, 0)
"""bf16 needs Ampere (8.0); older cards run ``--dtype half`` (gpumgr passes it itself)."""

AWQ_COMPUTE = (7, 5)
"""vLLM's AWQ kernels need Turing (7.5): "Minimum capability: 75" on a V100 (vllm#4202)."""

MIN_VLLM_AWQ_TURING = (0, 2, 1)
"""The first vLLM that runs AWQ on Turing. vLLM 0.2.0 refused it ("The quantization method awq
is not supported for the current GPU. Minimum capability: 80. Current capability: 75.",
vllm-project/vllm#1282); the sm_75 workaround (two m16n8k8 MMAs for one m16n8k16),
vllm-project/vllm#1252, was merged on 2023-10-03 and first released in v0.2.1."""

MIN_VLLM_AWQ_MARLIN_TURING = (0, 14, 0)
"""``awq_marlin`` (what gpumgr picks for AWQ) on sm_75 came with vllm-project/vllm#29901
(Marlin for Turing, merged 2025-12; the docs' matrix followed in #34319, 2026-02). 0.14.0 is
the first release we place after it; older vLLM on Turing needs ``quantization: awq``."""

DRIVER_FIX = (
    f"install the NVIDIA driver (>= {MIN_DRIVER_MAJOR} for vLLM's CUDA 13 wheels), e.g. "
    "`sudo apt install nvidia-driver-580-server`, reboot, then check `nvidia-smi`"
)

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``0.11.0``, ``0.11.0rc2.dev1+g…``, ``vllm 0.33.0`` -> (major, minor, patch)."""
    if not text:
        return None
    m = _VERSION.search(text)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _dotted(v: Sequence[int]) -> str:
    return ".".join(str(x) for x in v)


# -- GPU -----------------------------------------------------------------------------------------


def check_driver(inv: GpuInventory) -> list[Check]:
    """NVML readable, at least one card, driver new enough."""
    if not inv.available:
        return [fail("gpu.nvml", inv.error or "GPU unavailable", DRIVER_FIX)]
    if not inv.gpus:
        return [fail("gpu.nvml", "NVML answers but lists no GPU",
                     "check `nvidia-smi -L`; in a container, pass the GPU (--gpus all)")]
    out = [ok("gpu.nvml", f"{len(inv.gpus)} GPU(s): " + ", ".join(g.name for g in inv.gpus))]
    major = parse_version(inv.driver_version)
    if major is None:
        out.append(warn("gpu.driver", f"driver version unreadable ({inv.driver_version!r})",
                        "check `nvidia-smi`"))
    elif major[0] < MIN_DRIVER_MAJOR:
        out.append(fail("gpu.driver", f"driver {inv.driver_version}: vLLM's CUDA 13 wheels need "
                        f">= {MIN_DRIVER_MAJOR}",
                        f"upgrade the NVIDIA driver to >= {MIN_DRIVER_MAJOR}, or install a vLLM "
                        "built for CUDA 12"))
    else:
        out.append(ok("gpu.driver", f"driver {inv.driver_version} (>= {MIN_DRIVER_MAJOR})"))
    return out


@dataclass(frozen=True)
class AwqUser:
    """A vLLM provider on a card that loads AWQ weights, with its vLLM's version if known."""

    provider: str
    vllm_version: str | None
    quantization: str | None


def check_compute(gpu: GpuInfo, awq_users: Sequence[AwqUser] = ()) -> Check:
    name = f"gpu.{gpu.index}.compute"
    cc = parse_version(gpu.compute_capability)
    if cc is None:
        return warn(name, f"{gpu.name}: compute capability unreadable",
                    "check `nvidia-smi --query-gpu=compute_cap --format=csv`")
    cap = cc[:2]
    label = f"{gpu.name}: compute capability {cap[0]}.{cap[1]}"
    if cap < MIN_COMPUTE:
        return fail(name, f"{label}: vLLM needs >= 7.0", "use a Volta or newer card for vLLM")
    if cap < AWQ_COMPUTE:
        if awq_users:
            names = ", ".join(u.provider for u in awq_users)
            return fail(name, f"{label}: no AWQ kernel below 7.5 ({names} load AWQ weights)",
                        "use GPTQ or unquantised weights on this card")
        return ok(name, f"{label}: dtype half (no bf16); no AWQ")
    implies = "dtype half (no bf16), Triton attention (no FlashAttention)" if cap < BF16_COMPUTE \
        else "bf16 available"
    if cap >= BF16_COMPUTE:
        return ok(name, f"{label}: {implies}; AWQ via awq_marlin")
    too_old: list[str] = []
    marlin_old: list[str] = []
    for u in awq_users:
        v = parse_version(u.vllm_version)
        if v is None:
            continue
        if v < MIN_VLLM_AWQ_TURING:
            too_old.append(f"{u.provider} (vLLM {u.vllm_version})")
        elif v < MIN_VLLM_AWQ_MARLIN_TURING and (u.quantization or "awq_marlin") != "awq":
            marlin_old.append(f"{u.provider} (vLLM {u.vllm_version})")
    if too_old:
        return fail(name, f"{label}: AWQ on Turing needs vLLM >= {_dotted(MIN_VLLM_AWQ_TURING)}: "
                    + ", ".join(too_old), "upgrade vLLM (`pip install -U vllm` in its virtualenv)")
    if marlin_old:
        return warn(name, f"{label}: awq_marlin on Turing needs vLLM >= "
                    f"{_dotted(MIN_VLLM_AWQ_MARLIN_TURING)}: " + ", ".join(marlin_old),
                    "upgrade vLLM, or set `quantization: awq` on those providers")
    return ok(name, f"{label}: {implies}; AWQ needs vLLM >= {_dotted(MIN_VLLM_AWQ_TURING)} "
              f"(awq_marlin >= {_dotted(MIN_VLLM_AWQ_MARLIN_TURING)})")


# -- vLLM executables ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionProbe:
    """What ``<vllm> --version`` did: ``found`` False when the executable does not exist."""

    argv: tuple[str, ...]
    found: bool
    version: str | None = None
    error: str | None = None


def check_vllm(provider: str, probe: VersionProbe) -> Check:
    name = f"vllm.{provider}"
    cmd = " ".join(probe.argv)
    if not probe.found:
        return fail(name, f"vLLM executable not found: {cmd}",
                    "install vLLM (`python3 -m venv /opt/vllm && /opt/vllm/bin/pip install vllm`) "
                    "and set vllm.command in gpumgr.yaml, or the provider's vllm_bin/location")
    if probe.version is None or parse_version(probe.version) is None:
        return fail(name, f"`{cmd} --version` failed: {probe.error or 'no version printed'}",
                    f"run `{cmd} --version` by hand; reinstall vLLM if it fails")
    return ok(name, f"{cmd}: vLLM {probe.version}")


# -- ports ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    """Who listens on a TCP port: ``pid`` None when the kernel hides it (another user's)."""

    pid: int | None
    name: str = ""


def check_port(
    port: int,
    users: Sequence[str],
    kind: str,
    listener: Listener | None,
    ours: Mapping[int, str],
    daemon_pid: int | None,
) -> Check:
    """``kind``: ``vllm`` (gpumgr starts a server there), ``ollama`` or ``status``."""
    name = f"port.{port}"
    who = ", ".join(users)
    if listener is None:
        if kind == "ollama":
            return warn(name, f"{port} ({who}): nothing listening", "start Ollama "
                        "(`systemctl start ollama`) or fix the provider's base_url")
        return ok(name, f"{port} ({who}): free")
    holder = f"pid {listener.pid} ({listener.name or '?'})" if listener.pid else \
        "a process of another user"
    if kind == "ollama":
        return ok(name, f"{port} ({who}): Ollama, {holder}")
    if kind == "status":
        if listener.pid is not None and listener.pid == daemon_pid:
            return ok(name, f"{port} ({who}): the gpumgr daemon (pid {daemon_pid})")
        if listener.pid is None and daemon_pid is not None:
            return ok(name, f"{port} ({who}): held, daemon pid {daemon_pid} running")
        return fail(name, f"{port} ({who}): held by {holder}, not the gpumgr daemon",
                    f"stop that process, or set another `listen:` in gpumgr.yaml "
                    f"(`sudo ss -ltnp 'sport = :{port}'` names it)")
    if listener.pid is not None and listener.pid in ours:
        return ok(name, f"{port} ({who}): ours, {ours[listener.pid]} (pid {listener.pid})")
    return fail(name, f"{port} ({who}): held by {holder}, which gpumgr did not start",
                f"stop it (`sudo ss -ltnp 'sport = :{port}'` names it), or give the provider "
                "another port in its base_url")


# -- systemd, the daemon, its socket -------------------------------------------------------------


def check_systemd(has_systemctl: bool, active: str | None, enabled: str | None) -> Check:
    """``active``/``enabled``: what ``systemctl is-active``/``is-enabled gpumgr`` printed."""
    if not has_systemctl:
        return warn("systemd", "no systemd (systemctl not found)",
                    "run `gpumgr daemon` under your own supervisor, or install on a systemd host")
    if enabled in (None, "", "not-found") and active in (None, "", "inactive", "unknown"):
        if active is None and enabled is None:
            return warn("systemd", "systemctl does not answer (systemd not running here?)",
                        "in a container, run `gpumgr daemon` directly")
        return warn("systemd", "gpumgr.service is not installed",
                    "sudo bash scripts/install.sh (or copy systemd/gpumgr.service and "
                    "`systemctl daemon-reload`)")
    if active == "active":
        return ok("systemd", f"gpumgr.service active, {enabled or 'enablement unknown'}")
    if active == "failed":
        return fail("systemd", f"gpumgr.service failed ({enabled})",
                    "`journalctl -u gpumgr -e` says why; then `systemctl restart gpumgr`")
    return warn("systemd", f"gpumgr.service {active or 'inactive'}, {enabled or '?'}",
                "sudo systemctl enable --now gpumgr")


def check_daemon(listen: str, healthz: Mapping[str, Any] | None, error: str | None,
                 lock_pid: int | None) -> Check:
    if healthz is not None:
        return ok("daemon", f"answering on {listen} (pid {healthz.get('pid')}, up "
                  f"{float(healthz.get('uptime_s') or 0):.0f} s)")
    if lock_pid is not None:
        return fail("daemon", f"pid {lock_pid} holds the daemon lock but {listen} does not "
                    f"answer ({error})", "`journalctl -u gpumgr -e`; a wedged daemon is "
                    "restarted by the watchdog, or `systemctl restart gpumgr`")
    return warn("daemon", f"not running (nothing answers on {listen}: {error})",
                "sudo systemctl start gpumgr (or `gpumgr daemon`)")


def check_socket(path: str, exists: bool, connect_error: str | None, daemon_up: bool) -> Check:
    if not exists:
        if daemon_up:
            return warn("daemon.socket", f"control socket {path} not found",
                        "this daemon predates the control socket: upgrade and restart it")
        return ok("daemon.socket", f"no control socket at {path} (daemon not running)")
    if connect_error is not None:
        return fail("daemon.socket", f"{path} exists but refuses connections ({connect_error})",
                    "a stale socket of a dead daemon: `systemctl restart gpumgr`; check the "
                    "permissions of the runtime directory for the CLI's user")
    return ok("daemon.socket", f"control socket {path} accepts connections")


# -- LiteLLM -------------------------------------------------------------------------------------

GPUMGR_CALLBACK = "gpumgr.integrations.litellm.status_filter"
"""What LiteLLM imports: module ``gpumgr.integrations.litellm``, instance ``status_filter``
(LiteLLM splits the last dot off as the instance name; nothing follows it)."""


def check_litellm(path: str, text: str | None, read_error: str | None) -> Check:
    """The proxy's config loads gpumgr's callback (``litellm_settings.callbacks``)."""
    fix = (f"add `callbacks: [{GPUMGR_CALLBACK}]` under litellm_settings (or run "
           "`gpumgr litellm-config --merge` on this file)")
    if text is None:
        return fail("litellm", f"{path}: {read_error}", "point LITELLM_CONFIG (or "
                    "--litellm-config) at the proxy's config.yaml")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return fail("litellm", f"{path}: not YAML ({str(exc).splitlines()[0]})",
                    "fix the file; `litellm --config` would refuse it too")
    settings = data.get("litellm_settings") if isinstance(data, dict) else None
    callbacks = settings.get("callbacks") if isinstance(settings, dict) else None
    if isinstance(callbacks, str):
        callbacks = [callbacks]
    if not isinstance(callbacks, list):
        return fail("litellm", f"{path}: no litellm_settings.callbacks", fix)
    if GPUMGR_CALLBACK in callbacks:
        return ok("litellm", f"{path}: loads {GPUMGR_CALLBACK}")
    return fail("litellm", f"{path}: callbacks {callbacks} lack {GPUMGR_CALLBACK}", fix)


def check_litellm_cloud_key(path: str, text: str | None) -> Check | None:
    """A warning when the proxy's config takes an Ollama key from ``$OLLAMA_API_KEY`` and has
    Ollama entries without a key: LiteLLM sends that key to them too (config/cloud_key.py).
    None when there is nothing to say (or the file does not parse: ``check_litellm`` says so)."""
    try:
        data = yaml.safe_load(text) if text is not None else None
    except yaml.YAMLError:
        return None
    leaking = keyless_beside_cloud_key(data.get("model_list") if isinstance(data, dict) else None)
    if not leaking:
        return None
    assert text is not None
    line = next((i for i, ln in enumerate(text.splitlines(), 1) if CLOUD_KEY_REF in ln), None)
    where = f"{path}:{line}" if line else path
    names = ", ".join(name for name, _ in leaking)
    return warn(
        "litellm.cloud_key",
        f"{where}: {CLOUD_KEY_REF} is the Ollama Cloud key, and LiteLLM also sends "
        f"$OLLAMA_API_KEY to the Ollama entries without an api_key ({names})",
        f"rename the variable (e.g. {SAFE_NAME} in the proxy's environment and "
        f"os.environ/{SAFE_NAME} here, and the provider's env_var), or give those entries "
        "`api_key: none`; `gpumgr litellm-config --merge` on this file does one or the other",
    )
