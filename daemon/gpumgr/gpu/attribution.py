"""Who owns each GPU process: a managed backend, Ollama, or unknown. Pure: facts in, tags out.

Rules, first match wins:

1. the pid is a managed backend's recorded pid -> that backend;
2. the process group is a managed backend's group -> that backend (vLLM's ``EngineCore`` child
   holds the VRAM, not the API server; every child runs in its own group, DESIGN.md §7);
3. the process name looks like Ollama's (``ollama``, its ``ollama_llama_server`` /
   ``ollama runner`` children), or the pid is one the caller learnt is Ollama's -> ``ollama``;
4. otherwise ``unknown``: memory the planner must treat as taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from gpumgr.gpu import OWNER_OLLAMA, OWNER_UNKNOWN, GpuInfo, GpuInventory, GpuProcess


def is_ollama_name(name: str) -> bool:
    """True for Ollama's server and runner process names (basename, case-insensitive)."""
    base = name.rsplit("/", 1)[-1].lower()
    return base.startswith("ollama")


def owner_of(
    proc: GpuProcess,
    managed_pids: Mapping[int, str],
    managed_pgids: Mapping[int, str],
    ollama_pids: Iterable[int] = (),
) -> str:
    """The owner tag for one process (see the module's rules)."""
    if proc.pid in managed_pids:
        return managed_pids[proc.pid]
    if proc.pgid is not None and proc.pgid in managed_pgids:
        return managed_pgids[proc.pgid]
    if is_ollama_name(proc.name) or proc.pid in set(ollama_pids):
        return OWNER_OLLAMA
    return OWNER_UNKNOWN


def attribute(
    inventory: GpuInventory,
    managed_pids: Mapping[int, str] | None = None,
    managed_pgids: Mapping[int, str] | None = None,
    ollama_pids: Iterable[int] = (),
) -> GpuInventory:
    """The same inventory with every process's ``owner`` set.

    ``managed_pids`` / ``managed_pgids`` map the supervisor's children (pid and process group)
    to backend names; a child started with ``start_new_session`` has pgid == pid, so passing
    the same mapping for both is the common case.
    """
    pids = dict(managed_pids or {})
    pgids = dict(managed_pgids if managed_pgids is not None else pids)
    ollama = frozenset(ollama_pids)

    def tag(g: GpuInfo) -> GpuInfo:
        return replace(
            g, processes=tuple(p.with_owner(owner_of(p, pids, pgids, ollama)) for p in g.processes)
        )

    return replace(inventory, gpus=tuple(tag(g) for g in inventory.gpus))
