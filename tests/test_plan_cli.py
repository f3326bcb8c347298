"""``gpumgr plan`` and ``gpumgr gpus`` on the example configuration, simulated and without a driver."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gpumgr.cli import main
from gpumgr.gpu.nvml import NvmlBackend
from gpumgr.sim.gpu import SimGpuState, sim_uuid
from tests.helpers import free_port

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The example config with Ollama pointed at a closed port, every directory in tmp_path."""
    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, cfg)
    providers = cfg / "providers.yaml"
    providers.write_text(providers.read_text().replace(":11434", f":{free_port()}"))
    out = {"GPUMGR_CONFIG_DIR": str(cfg), "GPUMGR_SIM_GPU_STATE": str(tmp_path / "gpu.json")}
    for d in ("RUNTIME", "STATE", "LOG", "CACHE"):
        out[f"GPUMGR_{d}_DIR"] = str(tmp_path / d.lower())
    out["GPUMGR_SIMULATE"] = ""
    return out


def _run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def ollama_holding_4gib(env: dict[str, str]) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        SimGpuState(Path(env["GPUMGR_SIM_GPU_STATE"])).allocate(proc.pid, sim_uuid(0), 4096, "ollama")
        yield
    finally:
        proc.kill()
        proc.wait()


def test_plan_simulate_plans_the_active_qwen_7b(env: dict[str, str]) -> None:
    r = _run(env, "plan", "--simulate", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["feasible"] and doc["simulated"]
    (gpu,) = doc["gpus"]
    (inst,) = gpu["instances"]
    assert inst["provider"] == "qwen-7b" and inst["port"] == 8001
    # max_num_seqs 16 caps the KV share: more than 16 full sequences buys nothing
    assert inst["gpu_memory_utilization"] == 0.84
    assert inst["max_concurrency"] >= 16
    assert inst["gpu_uuid"] == sim_uuid(0)


def test_plan_json_shows_the_exact_argv_with_only_flags_vllm_accepts(env: dict[str, str]) -> None:
    from vllm_fixtures import reference_flags

    from gpumgr.engines.vllm import emitted_flags

    r = _run(env, "plan", "--simulate", "--json")
    (inst,) = json.loads(r.stdout)["gpus"][0]["instances"]
    argv = inst["argv"]
    assert argv[argv.index("serve") + 1] == "<snapshot of Qwen/Qwen2.5-Coder-7B-Instruct-AWQ>"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.84"
    assert argv[argv.index("--port") + 1] == "8001"
    assert set(emitted_flags(argv)) <= set(reference_flags())


def test_plan_simulate_qwen_14b_fits_beside_the_display(env: dict[str, str]) -> None:
    r = _run(env, "plan", "--simulate", "qwen-14b")
    assert r.exit_code == 0, r.output
    assert "qwen-14b" in r.stdout and "fits" in r.stdout


def test_plan_simulate_qwen_14b_does_not_fit_beside_ollamas_4_gib(
    env: dict[str, str], ollama_holding_4gib: None
) -> None:
    r = _run(env, "plan", "--simulate", "qwen-14b")
    assert r.exit_code == 1
    assert "does not fit" in r.stdout
    last = r.stderr.strip().splitlines()
    assert len(last) == 1 and "qwen-14b does not fit: short by" in last[0]


def test_plan_rejects_unknown_and_non_vllm_providers(env: dict[str, str]) -> None:
    assert _run(env, "plan", "--simulate", "nope").exit_code == 2
    assert _run(env, "plan", "--simulate", "ollama").exit_code == 2
    assert _run(env, "plan", "--simulate", "openai").exit_code == 2


def test_gpus_simulate_json_lists_the_reference_card(
    env: dict[str, str], ollama_holding_4gib: None
) -> None:
    r = _run(env, "gpus", "--simulate", "--json")
    assert r.exit_code == 0, r.output
    (g,) = json.loads(r.stdout)["gpus"]
    assert (g["name"], g["memory_total_mib"], g["memory_used_mib"]) == ("Quadro RTX 5000", 16384, 4396)
    assert [p["owner"] for p in g["processes"]] == ["ollama"]


def test_without_a_driver_gpus_and_plan_say_so_and_exit_1(env: dict[str, str]) -> None:
    if NvmlBackend().read().available:
        pytest.skip("an NVIDIA driver is present")
    for args in (("gpus",), ("plan", "qwen-7b", "--config-dir", env["GPUMGR_CONFIG_DIR"])):
        r = _run(env, *args)
        assert r.exit_code == 1
        assert r.stdout == ""
        assert r.stderr.strip().startswith("error: GPU unavailable: ")
        assert len(r.stderr.strip().splitlines()) == 1


def test_every_module_of_gpu_and_plan_imports_without_a_driver() -> None:
    code = (
        "import importlib, pkgutil, gpumgr.gpu, gpumgr.plan\n"
        "for pkg in (gpumgr.gpu, gpumgr.plan):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "import gpumgr.cli.gpus, gpumgr.cli.plan\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
