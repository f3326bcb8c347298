"""The I/O behind ``gpumgr gpus`` and ``gpumgr plan`` without a daemon: read the inventory,
guess owners from listening ports, ask Ollama what it holds, find each model's files.

The daemon knows its children (pids, process groups) and its snapshots; the CLI does not, so
it recognises a running backend by the port it listens on and its command line. Everything
here is best effort except the inventory itself, whose absence is an error (exit 1).
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from gpumgr.actions.ollama_room import OllamaRoom
from gpumgr.config import Config
from gpumgr.config.registry import Provider, ProviderStatus
from gpumgr.errors import InputError
from gpumgr.gpu import GpuBackend, GpuInventory
from gpumgr.gpu.attribution import attribute
from gpumgr.gpu.nvml import NvmlBackend
from gpumgr.sim.gpu_backend import SimulatedBackend
from gpumgr.modelfiles import ModelDims, ModelFileError, model_dims, read_model_dims, weights_bytes
from gpumgr.plan.model import OllamaModel

OLLAMA_PS_TIMEOUT_S = 1.0


def open_backend(cfg: Config | None, simulate: bool) -> GpuBackend:
    """The simulated cards of ``gpumgr.yaml`` under ``--simulate``, else NVML."""
    if simulate and cfg is not None:
        return SimulatedBackend.from_settings(cfg.settings, cfg.paths.runtime_dir)
    return NvmlBackend()


def running_providers(providers: list[Provider]) -> dict[int, str]:
    """pid -> provider for local processes listening on a vLLM provider's port.

    Two providers may share a port (swap partners): the one whose served name appears on the
    process's command line wins, else the active one.
    """
    by_port: dict[int, list[Provider]] = {}
    for p in providers:
        if p.is_vllm and p.port is not None and p.runs_here:
            by_port.setdefault(p.port, []).append(p)
    if not by_port:
        return {}
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return {}
    out: dict[int, str] = {}
    for c in conns:
        if c.status != psutil.CONN_LISTEN or c.pid is None or not c.laddr:
            continue
        candidates = by_port.get(c.laddr.port)
        if not candidates:
            continue
        try:
            cmdline = " ".join(psutil.Process(c.pid).cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            cmdline = ""
        named = [p for p in candidates if any(n in cmdline for n in p.served_names)]
        active = [p for p in candidates if p.status is ProviderStatus.ACTIVE]
        out[c.pid] = (named or active or candidates)[0].name
    return out


def attributed_inventory(backend: GpuBackend, providers: list[Provider]) -> GpuInventory:
    """The inventory with owners: managed by listening port (pid and process group), Ollama by
    process name, the rest unknown."""
    inv = backend.read()
    if not inv.available:
        return inv
    pids = running_providers(providers)
    pgids: dict[int, str] = {}
    for pid, name in pids.items():
        try:
            pgids[os.getpgid(pid)] = name
        except OSError:
            continue
    return attribute(inv, managed_pids=pids, managed_pgids=pgids)


def ollama_models(providers: list[Provider]) -> list[OllamaModel] | None:
    """Ollama's loaded models (``/api/ps`` ``size_vram``), or None when no local Ollama answers."""
    return OllamaRoom(providers, timeout_s=OLLAMA_PS_TIMEOUT_S).loaded()


def snapshot_path(provider: Provider, cfg: Config, simulate: bool) -> Path | None:
    """The provider's complete local snapshot (what ``gpumgr pull`` left), or None. No network."""
    from gpumgr.weights import hub_cache_dir, local_snapshot

    snap = local_snapshot(provider, hub_cache_dir(cfg.paths.cache_dir, simulate=simulate))
    return snap.path if snap else None


def model_facts(
    provider: Provider, cfg: Config, simulate: bool
) -> tuple[ModelDims, int | None, int | None]:
    """(dims, snapshot weights bytes, hub weights bytes) for a vLLM provider.

    Looks in the downloaded snapshot first; under simulation, the simulated hub's catalog
    stands in for the hub. ``InputError`` when no config.json can be found.
    """
    repo = provider.hf_repo
    if repo is None:
        raise InputError(f"{provider.name}: no Hugging Face repo (set hf_repo on its model)")
    snap = snapshot_path(provider, cfg, simulate)
    try:
        if snap is not None:
            dims = read_model_dims(snap)
            try:
                return dims, weights_bytes(snap), None
            except ModelFileError:
                return dims, None, None
        if simulate:
            from gpumgr.sim.catalog import load_catalog

            spec = load_catalog().get(repo)
            if spec is not None:
                return model_dims(spec.config), None, spec.weights_bytes
    except ModelFileError as exc:
        raise InputError(f"{provider.name}: {exc}") from None
    raise InputError(
        f"{provider.name}: no downloaded snapshot of {repo} in {cfg.paths.cache_dir} "
        f"(run `gpumgr pull {provider.name}` first)"
    )

