"""Pure checks of what gpumgr talks to: Ollama, Ollama Cloud, the hub token, disk, weights.

Facts in, ``Check`` values out (the runner reads them). A key's value never reaches these
functions: they get where it came from (``$NAME``, ``credential NAME``) or None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gpumgr.config.hosts import is_loopback
from gpumgr.doctor import Check, fail, ok, warn

GIB = 1024**3


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


# -- Ollama --------------------------------------------------------------------------------------

OLLAMA_SETTINGS = ("OLLAMA_MAX_LOADED_MODELS", "OLLAMA_KEEP_ALIVE")


def check_ollama_reachable(provider: str, url: str, version: str | None, error: str | None,
                           active: bool) -> Check:
    name = f"ollama.{provider}"
    if version is not None:
        return ok(name, f"Ollama {version} at {url}")
    summary = f"Ollama at {url} does not answer ({error})"
    host = urlsplit(url).hostname
    if is_loopback(host) or host in ("0.0.0.0", "::"):
        fix = "`systemctl start ollama` (or fix the provider's base_url)"
    else:  # another machine's Ollama: nothing to start here
        fix = f"start Ollama on {host} and check it listens beyond loopback (OLLAMA_HOST), " \
              "or fix the provider's base_url"
    return fail(name, summary, fix) if active else warn(name, summary, fix)


def check_ollama_settings(provider: str, env: Mapping[str, str] | None, eviction: str) -> Check:
    """``env``: the Ollama server's environment (None when it could not be read)."""
    name = f"ollama.{provider}.settings"
    if env is None:
        return warn(name, "Ollama's environment is not readable (another user's process)",
                    "check `systemctl show ollama -p Environment` for OLLAMA_MAX_LOADED_MODELS=1 "
                    "and OLLAMA_KEEP_ALIVE")
    loaded = env.get("OLLAMA_MAX_LOADED_MODELS")
    keep = env.get("OLLAMA_KEEP_ALIVE")
    shown = f"OLLAMA_MAX_LOADED_MODELS={loaded or 'unset'}, OLLAMA_KEEP_ALIVE={keep or 'unset (5m)'}"
    problems: list[str] = []
    if loaded is None or not loaded.strip().isdigit() or int(loaded) != 1:
        problems.append("several models may load beside vLLM (default 3 per GPU)")
    if keep is not None and keep.strip().startswith("-") and eviction == "never":
        problems.append("models never unload and ollama.eviction is never")
    if problems:
        return warn(name, f"{shown}: " + "; ".join(problems),
                    "`systemctl edit ollama`: Environment=OLLAMA_MAX_LOADED_MODELS=1 "
                    "(and a finite OLLAMA_KEEP_ALIVE), then restart Ollama")
    return ok(name, shown)


def check_ollama_placement(provider: str, ps_models: Sequence[Mapping[str, Any]] | None) -> Check:
    """``/api/ps``: ``size_vram < size`` means part of the model runs on the CPU."""
    name = f"ollama.{provider}.placement"
    if ps_models is None:
        return warn(name, "/api/ps unreadable", "check Ollama's version (>= 0.1.38 has /api/ps)")
    if not ps_models:
        return ok(name, "no model loaded")
    spilled: list[str] = []
    for m in ps_models:
        size = int(m.get("size") or 0)
        vram = int(m.get("size_vram") or 0)
        if size and vram < size:
            spilled.append(f"{m.get('name', '?')} {100 * (size - vram) // size}% on CPU")
    if spilled:
        return warn(name, "spilled to CPU: " + ", ".join(spilled),
                    "the card is short (vLLM holds it): lower a vLLM slice, set "
                    "ollama.reservation_mib in gpumgr.yaml, or unload the model")
    return ok(name, f"{len(ps_models)} loaded model(s), all on the GPU")


# -- Ollama Cloud --------------------------------------------------------------------------------


def check_cloud(provider: str, env_var: str | None, key_source: str | None,
                status: int | None, error: str | None, models: int | None) -> Check:
    """One ``GET /api/tags`` with the key (never a completion). The key's value is not here."""
    name = f"cloud.{provider}"
    var = env_var or "the key variable"
    where = f"/etc/gpumgr/environment ({var}=…) or a systemd credential named {var}"
    if key_source is None:
        return fail(name, f"${var} is not set", f"put the key in {where}")
    if status == 200:
        return ok(name, f"key from {key_source} accepted ({models} models offered)")
    if status in (401, 403):
        return fail(name, f"key from {key_source} rejected (HTTP {status})",
                    f"create a new key on ollama.com and replace it in {where}")
    if status == 429:
        return warn(name, f"key from {key_source}: rate-limited (HTTP 429, quota spent)",
                    "wait for the quota to reset; gpumgr backs off by itself")
    if status is not None:
        return warn(name, f"ollama.com answered HTTP {status}", "try again later")
    return warn(name, f"ollama.com unreachable ({error})", "check the network / proxy settings")


# -- Hugging Face --------------------------------------------------------------------------------


def check_hf_token(provider: str, repo: str, token_source: str | None, local: bool,
                   gated: bool | None, offline: bool, error: str | None) -> Check:
    """A token is needed only for a gated repository whose weights are not on disk yet."""
    name = f"hf.{provider}"
    if local:
        return ok(name, f"{repo}: weights on disk, no token needed")
    if token_source is not None:
        return ok(name, f"{repo}: token from {token_source}")
    if gated is True:
        return fail(name, f"{repo} is gated and no token is set",
                    "request access on the repository's page, then put HF_TOKEN in "
                    "/etc/gpumgr/environment or a systemd credential named HF_TOKEN")
    if gated is False:
        return ok(name, f"{repo}: public, no token needed")
    if offline:
        return warn(name, f"{repo}: not on disk and HF_HUB_OFFLINE=1",
                    f"`gpumgr pull {provider}` on a machine with network")
    return warn(name, f"{repo}: could not ask the hub whether it is gated ({error})",
                "check the network; `gpumgr pull --dry-run " + provider + "` says more")


# -- disk and weights ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsNeed:
    provider: str
    active: bool
    missing_bytes: int | None
    """What is still to download: 0 when complete on disk, None when the size is unknown."""


def check_disk(cache_dir: str, free_bytes: int | None, needs: Sequence[WeightsNeed],
               margin_bytes: int) -> Check:
    if free_bytes is None:
        return warn("disk.cache", f"{cache_dir}: free space unreadable",
                    f"create it: `sudo mkdir -p {cache_dir}`")
    unknown = [n.provider for n in needs if n.missing_bytes is None]
    active = sum(n.missing_bytes or 0 for n in needs if n.active)
    every = sum(n.missing_bytes or 0 for n in needs)
    head = f"{cache_dir}: {_gib(free_bytes)} free"
    tail = f" (size unknown: {', '.join(unknown)}; set model_size_gb)" if unknown else ""
    if active + margin_bytes > free_bytes:
        return fail("disk.cache", f"{head}, active models still need {_gib(active)} + "
                    f"{_gib(margin_bytes)} margin{tail}",
                    "free space, or move cache_dir (gpumgr.yaml) to a larger disk")
    if every + margin_bytes > free_bytes:
        return warn("disk.cache", f"{head}; active fit, but with the standby models "
                    f"{_gib(every)} are needed{tail}", "free space before swapping to them")
    return ok("disk.cache", f"{head}, {_gib(every)} still to download{tail}")


def check_weights(provider: str, repo: str, snapshot: tuple[str, int] | None,
                  partial: bool, offline: bool, active: bool) -> Check:
    """``snapshot``: (commit, bytes) of a complete, size-verified local snapshot, or None."""
    name = f"weights.{provider}"
    if snapshot is not None:
        commit, size = snapshot
        return ok(name, f"{repo} @ {commit[:12]}: complete, {_gib(size)}")
    what = "partly downloaded" if partial else "not downloaded"
    if offline:
        return fail(name, f"{repo}: {what}, and HF_HUB_OFFLINE=1 forbids the download",
                    f"`gpumgr pull {provider}` where the hub is reachable")
    summary = f"{repo}: {what}" + (" (the daemon fetches it before the first start)" if active
                                   else "")
    return warn(name, summary, f"`gpumgr pull {provider}` now, so a start does not wait on it")
