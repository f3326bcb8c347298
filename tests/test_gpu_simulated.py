"""The simulated backend: the cards of gpumgr.yaml, live allocations, dead processes freed."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumgr.config.settings import Settings, SimGpuConfig, SimulateSettings
from gpumgr.gpu.attribution import attribute
from gpumgr.sim.gpu_backend import SimulatedBackend, sim_specs
from gpumgr.plan import estimate, InstanceRequest, plan_slices, request_for_gpu
from gpumgr.sim.gpu import SimGpuState, sim_uuid

MIB = 1 << 20


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _backend(tmp_path: Path, settings: Settings | None = None) -> SimulatedBackend:
    return SimulatedBackend(SimGpuState(tmp_path / "gpu.json"), sim_specs(settings or Settings()))


def test_default_card_is_the_reference_quadro_with_its_display(tmp_path: Path) -> None:
    inv = _backend(tmp_path).read()
    (g,) = inv.gpus
    assert inv.backend == "simulated" and inv.available
    assert (g.name, g.uuid, g.memory_total_mib) == ("Quadro RTX 5000", sim_uuid(0), 16384)
    assert (g.memory_used_mib, g.memory_free_mib) == (300, 16084)
    assert g.unattributed_bytes == 300 * MIB and g.processes == ()


def test_cards_come_from_settings(tmp_path: Path) -> None:
    s = Settings(simulate=SimulateSettings(gpus=[
        SimGpuConfig(), SimGpuConfig(name="RTX 4090", memory_total_mib=24564, display_used_mib=0),
    ]))
    inv = _backend(tmp_path, s).read()
    assert [(g.index, g.name, g.memory_free_mib) for g in inv.gpus] == [
        (0, "Quadro RTX 5000", 16084), (1, "RTX 4090", 24564),
    ]


def test_allocations_show_as_processes_and_vanish_when_the_process_dies(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    backend = _backend(tmp_path)
    backend.state.allocate(child.pid, sim_uuid(0), 7700, "vllm")
    g = backend.read().gpus[0]
    assert [(p.pid, p.name, p.used_mib, p.pgid) for p in g.processes] == [
        (child.pid, "vllm", 7700, child.pid)
    ]
    assert g.memory_free_mib == 16084 - 7700
    child.kill()
    child.wait()
    deadline = time.monotonic() + 5
    while backend.read().gpus[0].processes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend.read().gpus[0].memory_free_mib == 16084


def test_simulated_numbers_flow_through_attribution_into_the_plan(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    """A running 7B (a managed process group) and the planner asked about the 14B: the 7B's
    memory is taken, and the explanation says to stop it."""
    backend = _backend(tmp_path)
    backend.state.allocate(child.pid, sim_uuid(0), 7700, "vllm")
    inv = attribute(backend.read(), managed_pgids={child.pid: "qwen-7b"})
    gpu = inv.gpu(0)
    assert gpu.processes[0].owner == "qwen-7b"
    q14 = InstanceRequest(
        "qwen-14b",
        estimate(weights_bytes=int(9.3 * (1 << 30)), kv_bytes_per_token=192 * 1024,
                 max_model_len=8192),
    )
    plan = plan_slices(request_for_gpu(gpu, [q14], reserve_bytes=256 * MIB))
    assert not plan.feasible
    assert "stop qwen-7b (holds 7700 MiB)" in plan.problems[0].fixes


def test_unreadable_state_file_is_gpu_unavailable(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    backend.state.path.write_text("{not json")
    inv = backend.read()
    assert not inv.available and inv.error is not None and "unreadable" in inv.error
