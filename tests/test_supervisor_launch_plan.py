"""The launch planner: the slice comes from the inventory re-read at start time, and after an
out-of-memory exit only a strictly smaller slice is offered."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from gpumgr.actions.ollama_room import OllamaRoom
from gpumgr.actions.prepare import LaunchPlanner, PlanView
from gpumgr.actions.start import LaunchSpec, PrepareHint
from gpumgr.config.registry import Provider
from gpumgr.config.settings import OllamaSettings, Settings
from gpumgr.engines.vllm_log import OomKind
from gpumgr.errors import PlanInfeasible
from gpumgr.sim.gpu_backend import SimulatedBackend
from gpumgr.modelfiles import header_only_safetensors
from gpumgr.sim.gpu import SimGpuSpec, SimGpuState, sim_uuid
from gpumgr.sim.ollama_process import SimOllamaProcess, start_sim_ollama

GIB = 1024**3
SIM_COMMAND = [sys.executable, "-m", "gpumgr.sim.vllm"]


QWEN_7B = {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
           "hidden_size": 3584}
QWEN_14B = {"num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8,
            "hidden_size": 5120}


def _snapshot(tmp: Path, name: str = "qwen7b", dims: dict[str, int] = QWEN_7B,
              weights_gib: float = 5.2) -> Path:
    """A snapshot directory with the model's config.json and a header-only safetensors."""
    snap = tmp / name
    snap.mkdir()
    (snap / "config.json").write_text(json.dumps({
        **dims, "max_position_embeddings": 32768, "quantization_config": {"quant_method": "awq"},
    }))  # fmt: skip
    (snap / "model.safetensors").write_bytes(header_only_safetensors(int(weights_gib * GIB)))
    return snap


def view(providers: list[Provider], snapshots: dict[str, Path], *,
         managed: dict[int, str] | None = None, running: dict[str, float] | None = None) -> PlanView:
    return PlanView(tuple(providers), snapshots, managed or {}, running or {})


class Planner:
    """A planner with the one view its tests plan against."""

    def __init__(self, planner: LaunchPlanner, view: PlanView) -> None:
        self.planner, self.view, self.providers = planner, view, list(view.providers)

    def launch_spec(self, provider: Provider, hint: PrepareHint) -> LaunchSpec:
        return self.planner.launch_spec(provider, hint, self.view)


@pytest.fixture
def planner(tmp_path: Path) -> Planner:
    state = SimGpuState(tmp_path / "sim-gpu.json")
    provider = Provider(
        name="qwen-7b", type="vllm", base_url="http://127.0.0.1:8001", max_model_len=8192,
        max_num_seqs=16, models=[{"name": "qwen-coder-vllm"}],
    )  # fmt: skip
    return Planner(LaunchPlanner(
        settings=Settings(),
        inventory=SimulatedBackend(state, [SimGpuSpec(index=0, uuid=sim_uuid(0))]),
        command=SIM_COMMAND,
        base_env={},
    ), view([provider], {"qwen-7b": _snapshot(tmp_path)}))


def test_the_launch_carries_the_planned_fraction_and_the_card_uuid(planner: Planner) -> None:
    spec = planner.launch_spec(planner.providers[0], PrepareHint())
    assert spec.argv[:4] == [*SIM_COMMAND, "serve"]
    assert spec.argv[spec.argv.index("--gpu-memory-utilization") + 1] == f"{spec.fraction:g}"
    assert 0.4 < spec.fraction < 0.97
    assert spec.env["CUDA_VISIBLE_DEVICES"] == sim_uuid(0) == spec.gpu_uuid
    assert spec.port == 8001


def test_memory_taken_since_the_last_plan_shrinks_the_next_slice(
    planner: Planner, tmp_path: Path
) -> None:
    before = planner.launch_spec(planner.providers[0], PrepareHint()).fraction
    squatter = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        SimGpuState(tmp_path / "sim-gpu.json").allocate(squatter.pid, sim_uuid(0), 3000, "x")
        after = planner.launch_spec(planner.providers[0], PrepareHint(after_oom_fraction=before))
        assert after.fraction < before  # a smaller slice fits: it is offered
        with pytest.raises(PlanInfeasible, match="no smaller slice fits"):
            planner.launch_spec(planner.providers[0], PrepareHint(after_oom_fraction=0.35))
    finally:
        squatter.kill()
        squatter.wait()


def test_after_an_oom_the_same_slice_is_never_offered_again(planner: Planner) -> None:
    same = planner.launch_spec(planner.providers[0], PrepareHint()).fraction
    with pytest.raises(PlanInfeasible, match=f"--gpu-memory-utilization {same:g}"):
        planner.launch_spec(planner.providers[0], PrepareHint(after_oom_fraction=same))


def test_when_vllm_found_no_room_for_the_kv_cache_the_retry_asks_for_a_larger_slice(
    planner: Planner,
) -> None:
    """A slice too small for weights + KV is not cured by a smaller one: after "no available
    memory for the cache blocks" only a larger slice is offered (here the pin of 0.4 was too
    small, so the plan alone on the card offers more), and never the same one."""
    small = 0.4
    hint = PrepareHint(after_oom_fraction=small, oom_kind=OomKind.NO_KV_CACHE)
    retry = planner.launch_spec(planner.providers[0], hint)
    assert retry.fraction > small
    with pytest.raises(PlanInfeasible, match="no larger slice fits"):
        planner.launch_spec(
            planner.providers[0], PrepareHint(after_oom_fraction=0.97, oom_kind=OomKind.KV_TOO_SMALL)
        )


def test_a_running_engine_keeps_its_slice_in_the_plan_of_the_next_start(tmp_path: Path) -> None:
    """qwen-7b runs with 0.84 (an older plan, or adopted): the second provider's slice must fit
    beside what it really holds, not beside the smaller slice a joint plan would give it."""
    state = SimGpuState(tmp_path / "sim-gpu.json")
    spec = SimGpuSpec(index=0, uuid=sim_uuid(0))
    state.ensure([spec])
    qwen = Provider(
        name="qwen-7b", type="vllm", base_url="http://127.0.0.1:8001", max_model_len=8192,
        max_num_seqs=16, models=[{"name": "qwen-coder-vllm"}],
    )  # fmt: skip
    other = Provider(
        name="qwen-b", type="vllm", base_url="http://127.0.0.1:8002", max_model_len=2048,
        max_num_seqs=2, models=[{"name": "qwen-b"}],
    )  # fmt: skip
    snap = _snapshot(tmp_path)
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # what a 0.84 engine holds: its context plus 0.84 of the card
        state.allocate(engine.pid, sim_uuid(0), 500 + int(0.84 * 16384), "vllm")
        planner = LaunchPlanner(
            settings=Settings(), inventory=SimulatedBackend(state, [spec]),
            command=SIM_COMMAND, base_env={},
        )  # fmt: skip
        snaps = {"qwen-7b": snap, "qwen-b": snap}
        aware = Planner(planner, view([qwen, other], snaps, managed={engine.pid: "qwen-7b"},
                                      running={"qwen-7b": 0.84}))
        with pytest.raises(PlanInfeasible):
            aware.launch_spec(other, PrepareHint())  # 0.84 + a 5.2 GiB model do not fit
        unaware = Planner(planner, view([qwen, other], snaps, managed={engine.pid: "qwen-7b"}))
        # without the running slice the joint plan would promise memory qwen-7b still holds
        assert unaware.launch_spec(other, PrepareHint()).fraction > 0
    finally:
        engine.kill()
        engine.wait()


@dataclass
class OllamaBox:
    """A simulated card whose Ollama holds a 6000 MiB model, and a 14B that needs its room."""

    tmp: Path
    ollama: SimOllamaProcess
    providers: list[Provider]
    state_path: Path
    spec: SimGpuSpec

    def planner(self, policy: str) -> LaunchPlanner:
        return LaunchPlanner(
            settings=Settings(ollama=OllamaSettings(eviction=policy)),  # type: ignore[arg-type]
            inventory=SimulatedBackend(SimGpuState(self.state_path), [self.spec]),
            command=SIM_COMMAND, base_env={}, ollama=OllamaRoom(self.providers),
        )  # fmt: skip

    def view(self) -> PlanView:
        return view([], {"qwen-14b": _snapshot(self.tmp, "qwen14b", QWEN_14B, 9.3)})

    def loaded(self) -> list[str]:
        return [m["name"] for m in
                httpx2.get(f"{self.ollama.base_url}/api/ps", timeout=10).json()["models"]]


@pytest.fixture
def ollama_box(tmp_path: Path) -> Iterator[OllamaBox]:
    state_path = tmp_path / "sim-gpu.json"
    spec = SimGpuSpec(index=0, uuid=sim_uuid(0))
    SimGpuState(state_path).ensure([spec])
    ollama = start_sim_ollama(
        ["llama3.1:latest"], loaded=["llama3.1:latest"], sizes_mib={"llama3.1:latest": 6000},
        env={"GPUMGR_SIM_GPU_STATE": str(state_path), "PATH": "/usr/bin:/bin"},
    )
    try:
        providers = [
            Provider(name="ollama", type="ollama", base_url=ollama.base_url,
                     models=[{"name": "llama3.1:latest"}]),
            Provider(name="qwen-14b", type="vllm", base_url="http://127.0.0.1:8001",
                     max_model_len=8192, max_num_seqs=4, models=[{"name": "qwen-coder-14b"}]),
        ]  # fmt: skip
        yield OllamaBox(tmp_path, ollama, providers, state_path, spec)
    finally:
        ollama.stop()


@pytest.mark.parametrize("policy", ["never", "unload_idle"])
def test_ollamas_resident_model_is_unloaded_to_make_room_unless_the_policy_says_never(
    ollama_box: OllamaBox, policy: str
) -> None:
    """A 6000 MiB Ollama model leaves too little for the 14B; gpumgr sees both and, by policy,
    unloads it through Ollama's API (keep_alive 0) before the start instead of failing."""
    b = ollama_box
    planner = b.planner(policy)
    qwen = b.providers[1]
    if policy == "never":
        with pytest.raises(PlanInfeasible, match="unload Ollama model llama3.1:latest"):
            planner.launch_spec(qwen, PrepareHint(), b.view())
        assert b.loaded() == ["llama3.1:latest"]
    else:
        launch = planner.launch_spec(qwen, PrepareHint(), b.view())
        assert launch.fraction > 0.6
        assert b.loaded() == []


@pytest.mark.parametrize("policy", ["never", "unload_idle"])
def test_the_fit_check_before_a_swap_agrees_with_the_start_and_unloads_nothing(
    ollama_box: OllamaBox, policy: str
) -> None:
    """The swap's check says "fits" exactly when the start would make it fit (by unloading the
    Ollama model the policy allows), and the check itself leaves Ollama's model loaded."""
    b = ollama_box
    plan = b.planner(policy).fit(b.providers[1], b.view())
    assert plan.feasible is (policy != "never")
    assert b.loaded() == ["llama3.1:latest"]  # the check unloaded nothing


@pytest.mark.parametrize(("policy", "evict", "unloads"), [
    ("unload_idle", None, True), ("never", None, False), ("never", True, True),
    ("unload_idle", False, False),
])
def test_decide_names_the_ollama_models_the_start_will_unload_and_unloads_none(
    ollama_box: OllamaBox, policy: str, evict: bool | None, unloads: bool
) -> None:
    """``LaunchPlanner.decide`` is the check: it names what the start would unload (the policy,
    or ``--evict-ollama`` over it) and touches nothing; a refusal names the model as the fix."""
    b = ollama_box
    d = b.planner(policy).decide(b.providers[1], b.view(), evict=evict)
    assert b.loaded() == ["llama3.1:latest"]
    if unloads:
        assert d.ok and [m.name for m in d.unload] == ["llama3.1:latest"]
        assert d.plan is not None and d.plan.instance("qwen-14b").fraction > 0.6
    else:
        assert d.refusal is not None and d.unload == ()
        assert "unload Ollama model llama3.1:latest" in d.refusal.message


def test_decide_for_a_wake_wants_the_sleepers_slice_back_once_the_others_leave(
    tmp_path: Path,
) -> None:
    """A sleeper (0.6 of the card, holding its CUDA context) beside an engine holding 8 GiB:
    refused now, allowed once that engine stops, as the swap into a sleeper asks."""
    state = SimGpuState(tmp_path / "sim-gpu.json")
    spec = SimGpuSpec(index=0, uuid=sim_uuid(0))
    state.ensure([spec])
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
             for _ in range(2)]
    try:
        state.allocate(procs[0].pid, sim_uuid(0), 500, "vllm")
        state.allocate(procs[1].pid, sim_uuid(0), 8192, "vllm")
        sleeper = Provider(name="sleeper", type="vllm", base_url="http://127.0.0.1:8002",
                           models=[{"name": "s"}])
        planner = LaunchPlanner(settings=Settings(), inventory=SimulatedBackend(state, [spec]),
                                command=SIM_COMMAND, base_env={})
        v = view([], {}, managed={procs[0].pid: "sleeper", procs[1].pid: "old"},
                 running={"sleeper": 0.6, "old": 0.5})
        now = planner.decide(sleeper, v, wake=True)
        assert now.refusal is not None
        assert now.refusal.message.startswith("sleeper cannot wake: it needs 9830 MiB more")
        once = planner.decide(sleeper, v, wake=True, gone=frozenset({"old"}))
        assert once.ok and once.plan is None and once.unload == ()
    finally:
        for p in procs:
            p.kill()
            p.wait()
