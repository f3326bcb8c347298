"""The simulated backend: cards and allocations from the shared state file of ``gpumgr.sim.gpu``.

The simulated driver reports MiB; this backend converts to bytes and builds the same
``GpuInventory`` NVML would, so the planner and the status document run the same code on both.
The display's memory is "used" but belongs to no listed process, as with a real desktop whose
Xorg runs outside the container's pid namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpumgr.config.settings import Settings
from gpumgr.gpu import MIB, GpuInfo, GpuInventory, GpuProcess
from gpumgr.sim.gpu import STATE_ENV, SimGpuSpec, SimGpuState, sim_uuid

SIM_STATE_FILENAME = "sim-gpu.json"
SIM_LOAD_ENV = "GPUMGR_SIM_LOAD_SECONDS"


def sim_specs(settings: Settings) -> list[SimGpuSpec]:
    """The cards of ``gpumgr.yaml`` ``simulate.gpus``, with stable simulated UUIDs."""
    return [
        SimGpuSpec(
            index=i,
            uuid=sim_uuid(i),
            name=g.name,
            memory_total_mib=g.memory_total_mib,
            display_used_mib=g.display_used_mib,
            compute_capability=g.compute_capability,
        )
        for i, g in enumerate(settings.simulate.gpus)
    ]


def sim_state_path(runtime_dir: Path) -> Path:
    """``$GPUMGR_SIM_GPU_STATE`` when set (children and tests share it), else in the runtime dir."""
    env = os.environ.get(STATE_ENV)
    return Path(env) if env else runtime_dir / SIM_STATE_FILENAME


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


class SimulatedBackend:
    """Reads the simulated driver's state file (creating the configured cards on first use)."""

    def __init__(
        self, state: SimGpuState, specs: list[SimGpuSpec] | None = None,
        load_seconds: float | None = None, vllm_version: str | None = None,
    ) -> None:
        self.state = state
        self.load_seconds = load_seconds
        self.vllm_version = vllm_version
        """The vLLM release the simulated engines imitate (``simulate.vllm_version``)."""
        if specs:
            state.ensure(specs)

    @classmethod
    def from_settings(cls, settings: Settings, runtime_dir: Path) -> SimulatedBackend:
        return cls(SimGpuState(sim_state_path(runtime_dir)), sim_specs(settings),
                   settings.simulate.load_seconds, settings.simulate.vllm_version)

    def engine_environment(self) -> dict[str, str]:
        """What a simulated engine needs to find this card (its state file) and how long it
        "loads" (``simulate.load_seconds``): put into each engine's environment by the launch
        builder, never into the daemon's own."""
        env = {STATE_ENV: str(self.state.path)}
        if self.load_seconds is not None:
            env[SIM_LOAD_ENV] = f"{self.load_seconds:g}"
        if self.vllm_version is not None:
            env["GPUMGR_SIM_VLLM_VERSION"] = self.vllm_version
        return env

    def read(self) -> GpuInventory:
        try:
            snap = self.state.read()
        except (OSError, ValueError, TypeError) as exc:
            return GpuInventory(
                backend="simulated",
                error=f"GPU unavailable: simulated GPU state {self.state.path} unreadable ({exc})",
            )
        gpus: list[GpuInfo] = []
        for spec in sorted(snap.gpus, key=lambda g: g.index):
            procs = tuple(
                GpuProcess(
                    pid=a.pid,
                    used_bytes=a.used_mib * MIB,
                    name=a.process_name,
                    kind="compute",
                    pgid=_pgid(a.pid),
                )
                for a in snap.allocations
                if a.gpu_uuid == spec.uuid
            )
            total = spec.memory_total_mib * MIB
            used = snap.used_mib(spec.uuid) * MIB
            gpus.append(
                GpuInfo(
                    index=spec.index,
                    uuid=spec.uuid,
                    name=spec.name,
                    memory_total_bytes=total,
                    memory_used_bytes=used,
                    memory_free_bytes=max(0, total - used),
                    memory_reserved_bytes=0,
                    processes=procs,
                    compute_capability=spec.compute_capability,
                )
            )
        if not gpus:
            return GpuInventory(
                backend="simulated",
                error=f"GPU unavailable: simulated GPU state {self.state.path} lists no cards",
            )
        return GpuInventory(backend="simulated", gpus=tuple(gpus), driver_version="simulated")
