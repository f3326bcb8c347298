"""The simulated GPU: cards and per-process allocations in one shared, lock-protected file.

Simulated engines (separate processes) register what they allocate, by pid; the daemon's
simulated inventory reads the same file. Allocations of processes that no longer exist are
dropped on read, as the driver frees a dead process's memory. The path travels to child
processes in ``$GPUMGR_SIM_GPU_STATE``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gpumgr.fsio import write_atomic

STATE_ENV = "GPUMGR_SIM_GPU_STATE"


@dataclass(frozen=True)
class SimGpuSpec:
    """One simulated card. ``display_used_mib`` is memory held outside any process (a desktop)."""

    index: int
    uuid: str
    name: str = "Quadro RTX 5000"
    memory_total_mib: int = 16384
    display_used_mib: int = 300
    compute_capability: str = "7.5"


@dataclass(frozen=True)
class SimAllocation:
    """Memory one process holds on one card."""

    pid: int
    gpu_uuid: str
    used_mib: int
    process_name: str
    create_time: float


@dataclass(frozen=True)
class SimSnapshot:
    """What the simulated driver reports at one moment."""

    gpus: tuple[SimGpuSpec, ...]
    allocations: tuple[SimAllocation, ...] = field(default_factory=tuple)

    def used_mib(self, gpu_uuid: str) -> int:
        gpu = self.gpu(gpu_uuid)
        return gpu.display_used_mib + sum(
            a.used_mib for a in self.allocations if a.gpu_uuid == gpu_uuid
        )

    def free_mib(self, gpu_uuid: str) -> int:
        return self.gpu(gpu_uuid).memory_total_mib - self.used_mib(gpu_uuid)

    def gpu(self, gpu_uuid: str) -> SimGpuSpec:
        for g in self.gpus:
            if g.uuid == gpu_uuid:
                return g
        raise KeyError(f"no simulated GPU with UUID {gpu_uuid}")


def sim_uuid(index: int) -> str:
    """A stable, obviously simulated UUID for card ``index``."""
    return f"GPU-5105e000-0000-4000-8000-{index:012d}"


def _process_alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.5:
            return False  # the pid was reused by another process
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class SimGpuState:
    """The shared state file. Every operation takes an exclusive ``flock`` on a sidecar file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    @classmethod
    def from_env(cls) -> SimGpuState | None:
        value = os.environ.get(STATE_ENV)
        return cls(Path(value)) if value else None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return {"gpus": [], "allocations": []}

    def _store(self, data: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(data).encode(), mode=0o600)

    @staticmethod
    def _snapshot(data: dict[str, Any]) -> SimSnapshot:
        gpus = tuple(SimGpuSpec(**g) for g in data.get("gpus", []))
        allocs = tuple(
            a
            for a in (SimAllocation(**x) for x in data.get("allocations", []))
            if _process_alive(a.pid, a.create_time)
        )
        return SimSnapshot(gpus=gpus, allocations=allocs)

    def ensure(self, specs: list[SimGpuSpec]) -> None:
        """Create the cards if the file has none; an existing file keeps its cards and allocations."""
        with self._locked():
            data = self._load()
            if not data.get("gpus"):
                data["gpus"] = [asdict(s) for s in specs]
                data.setdefault("allocations", [])
                self._store(data)

    def read(self) -> SimSnapshot:
        """The cards and the allocations of live processes (dead ones are pruned from the file)."""
        with self._locked():
            data = self._load()
            snap = self._snapshot(data)
            live = [asdict(a) for a in snap.allocations]
            if len(live) != len(data.get("allocations", [])):
                data["allocations"] = live
                self._store(data)
            return snap

    def allocate(self, pid: int, gpu_uuid: str, used_mib: int, process_name: str) -> SimSnapshot:
        """Set (not add to) what ``pid`` holds on ``gpu_uuid``; 0 removes it."""
        create_time = psutil.Process(pid).create_time()
        with self._locked():
            data = self._load()
            allocs = [
                a
                for a in data.get("allocations", [])
                if not (a["pid"] == pid and a["gpu_uuid"] == gpu_uuid)
            ]
            if used_mib > 0:
                allocs.append(
                    asdict(SimAllocation(pid, gpu_uuid, used_mib, process_name, create_time))
                )
            data["allocations"] = allocs
            self._store(data)
            return self._snapshot(data)

    def release(self, pid: int) -> None:
        """Drop every allocation of ``pid`` (a clean exit)."""
        with self._locked():
            data = self._load()
            data["allocations"] = [a for a in data.get("allocations", []) if a["pid"] != pid]
            self._store(data)
