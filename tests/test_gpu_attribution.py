"""Owner tagging of GPU processes: managed backend by pid or process group, Ollama, unknown."""

from __future__ import annotations

from gpumgr.gpu import GpuInfo, GpuInventory, GpuProcess
from gpumgr.gpu.attribution import attribute, is_ollama_name, owner_of


def _p(pid: int, name: str = "python3", pgid: int | None = None) -> GpuProcess:
    return GpuProcess(pid=pid, used_bytes=1 << 30, name=name, pgid=pgid)


def test_managed_pid_wins() -> None:
    assert owner_of(_p(10, "ollama", 10), {10: "qwen-7b"}, {}) == "qwen-7b"


def test_vllm_engine_core_child_is_owned_through_its_process_group() -> None:
    assert owner_of(_p(11, "VLLM::EngineCore", pgid=10), {10: "qwen-7b"}, {10: "qwen-7b"}) == "qwen-7b"


def test_ollama_by_name_or_by_pid_else_unknown() -> None:
    assert owner_of(_p(20, "/usr/local/bin/ollama"), {}, {}) == "ollama"
    assert owner_of(_p(21, "ollama_llama_server"), {}, {}) == "ollama"
    assert owner_of(_p(22, "llama-server"), {}, {}, ollama_pids=[22]) == "ollama"
    assert owner_of(_p(23, "python3", pgid=23), {}, {}) == "unknown"
    assert not is_ollama_name("vllm")


def test_attribute_tags_every_gpu_and_defaults_groups_to_pids() -> None:
    gpu = GpuInfo(0, "GPU-0", "card", 16 << 30, 3 << 30, 13 << 30,
                  processes=(_p(10, pgid=10), _p(11, pgid=10), _p(30, "ollama", 30)))
    inv = attribute(GpuInventory("nvml", (gpu,)), managed_pids={10: "qwen-7b"})
    owners = [p.owner for p in inv.gpus[0].processes]
    assert owners == ["qwen-7b", "qwen-7b", "ollama"]
    assert inv.gpus[0].held_by("qwen-7b") == 2 << 30
    assert inv.to_dict()["gpus"][0]["processes"][2]["owner"] == "ollama"
