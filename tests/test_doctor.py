"""``gpumgr doctor``: the pure checks on recorded values, the runner against real servers."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpumgr.cli import main
from gpumgr.doctor import Level
from gpumgr.doctor.checks_host import (
    AwqUser,
    Listener,
    VersionProbe,
    check_compute,
    check_driver,
    check_litellm,
    check_port,
    check_systemd,
    check_vllm,
    parse_version,
)
from gpumgr.doctor.checks_services import (
    WeightsNeed,
    check_cloud,
    check_disk,
    check_hf_token,
    check_ollama_placement,
    check_ollama_settings,
)
from gpumgr.doctor.runner import DoctorOptions, run_doctor
from gpumgr.gpu import GpuInfo, GpuInventory
from gpumgr.sim.ollama_process import running_sim_ollama
from tests.fake_http import JsonServer, Reply, Request
from tests.helpers import free_port

GIB = 1024**3
KEY = "oc-" + "k" * 20 + "0123456789abcdefghi"

# Recorded NVML values: the reference Quadro (driver 550, too old for CUDA 13 wheels) and the
# H200 of the gpu-check run (driver 580.159.04, docs/gpu-check.md).
QUADRO = GpuInfo(index=0, uuid="GPU-5f2e", name="Quadro RTX 5000", memory_total_bytes=16384 << 20,
                 memory_used_bytes=300 << 20, memory_free_bytes=16084 << 20,
                 compute_capability="7.5")
H200 = GpuInfo(index=0, uuid="GPU-h200", name="NVIDIA H200", memory_total_bytes=150754820096,
               memory_used_bytes=0, memory_free_bytes=150109880320,
               memory_reserved_bytes=644939776, compute_capability="9.0")
NO_DRIVER = GpuInventory(backend="nvml", error="GPU unavailable: NVML library (libnvidia-ml.so.1) "
                         "not found; is the NVIDIA driver installed?")


class FixedGpu:
    def __init__(self, inv: GpuInventory) -> None:
        self.inv = inv

    def read(self) -> GpuInventory:
        return self.inv


# -- pure checks ---------------------------------------------------------------------------------


def test_missing_driver_is_a_fail_with_the_fix() -> None:
    [c] = check_driver(NO_DRIVER)
    assert c.level is Level.FAIL and "libnvidia-ml" in c.summary
    assert "580" in c.fix and "nvidia-smi" in c.fix


def test_driver_below_580_fails_and_580_passes() -> None:
    old = check_driver(GpuInventory(backend="nvml", gpus=(QUADRO,), driver_version="550.54.15"))
    assert [c.level for c in old] == [Level.OK, Level.FAIL]
    new = check_driver(GpuInventory(backend="nvml", gpus=(H200,), driver_version="580.159.04"))
    assert [c.level for c in new] == [Level.OK, Level.OK]


def test_turing_implies_half_and_an_awq_capable_vllm() -> None:
    assert parse_version("0.11.0rc2.dev1+g1234") == (0, 11, 0)
    ok = check_compute(QUADRO, [AwqUser("qwen-7b", "0.33.0", None)])
    assert ok.level is Level.OK and "dtype half" in ok.summary and "0.2.1" in ok.summary
    too_old = check_compute(QUADRO, [AwqUser("qwen-7b", "0.2.0", None)])
    assert too_old.level is Level.FAIL and "qwen-7b (vLLM 0.2.0)" in too_old.summary
    no_marlin = check_compute(QUADRO, [AwqUser("qwen-7b", "0.10.1", "awq_marlin")])
    assert no_marlin.level is Level.WARN and "quantization: awq" in no_marlin.fix
    plain_awq = check_compute(QUADRO, [AwqUser("qwen-7b", "0.10.1", "awq")])
    assert plain_awq.level is Level.OK
    assert "bf16" in check_compute(H200).summary


def test_volta_refuses_awq() -> None:
    v100 = GpuInfo(index=1, uuid="GPU-v", name="Tesla V100", memory_total_bytes=1, memory_used_bytes=0,
                   memory_free_bytes=1, compute_capability="7.0")
    assert check_compute(v100, [AwqUser("x", None, None)]).level is Level.FAIL
    assert check_compute(v100).level is Level.OK


def test_vllm_executable_found_missing_and_broken() -> None:
    assert check_vllm("a", VersionProbe(("vllm",), False)).level is Level.FAIL
    assert check_vllm("a", VersionProbe(("vllm",), True, error="exit 1: ImportError")).level is Level.FAIL
    c = check_vllm("a", VersionProbe(("/opt/vllm/bin/vllm",), True, version="0.33.0"))
    assert c.level is Level.OK and "0.33.0" in c.summary


def test_ports_free_ours_and_foreign() -> None:
    assert check_port(8001, ["qwen-7b"], "vllm", None, {}, None).level is Level.OK
    ours = check_port(8001, ["qwen-7b"], "vllm", Listener(42, "python"), {42: "qwen-7b"}, 7)
    assert ours.level is Level.OK and "ours" in ours.summary
    foreign = check_port(8001, ["qwen-7b"], "vllm", Listener(43, "nginx"), {42: "qwen-7b"}, 7)
    assert foreign.level is Level.FAIL and "pid 43 (nginx)" in foreign.summary
    hidden = check_port(8001, ["qwen-7b"], "vllm", Listener(None), {}, None)
    assert hidden.level is Level.FAIL and "another user" in hidden.summary
    assert check_port(9400, ["status"], "status", Listener(7, "gpumgr"), {}, 7).level is Level.OK
    assert check_port(11434, ["ollama"], "ollama", None, {}, None).level is Level.WARN


def test_systemd_states() -> None:
    assert check_systemd(False, None, None).summary == "no systemd (systemctl not found)"
    assert check_systemd(True, "active", "enabled").level is Level.OK
    assert check_systemd(True, "failed", "enabled").level is Level.FAIL
    assert "install.sh" in check_systemd(True, "inactive", "not-found").fix


def test_ollama_settings_and_placement() -> None:
    good = check_ollama_settings("o", {"OLLAMA_MAX_LOADED_MODELS": "1"}, "unload_idle")
    assert good.level is Level.OK
    assert check_ollama_settings("o", {}, "unload_idle").level is Level.WARN
    assert check_ollama_settings("o", None, "unload_idle").level is Level.WARN
    forever = check_ollama_settings(
        "o", {"OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_KEEP_ALIVE": "-1"}, "never")
    assert forever.level is Level.WARN and "never unload" in forever.summary
    spilled = check_ollama_placement("o", [{"name": "llama3.1", "size": 100, "size_vram": 60}])
    assert spilled.level is Level.WARN and "40% on CPU" in spilled.summary
    assert check_ollama_placement("o", [{"name": "a", "size": 5, "size_vram": 5}]).level is Level.OK


def test_cloud_hf_disk() -> None:
    assert check_cloud("c", "K", None, None, None, None).level is Level.FAIL
    assert check_cloud("c", "K", "$K", 200, None, 3).level is Level.OK
    assert check_cloud("c", "K", "$K", 401, None, None).level is Level.FAIL
    assert check_cloud("c", "K", "$K", 429, None, None).level is Level.WARN
    assert check_hf_token("p", "org/r", None, False, True, False, None).level is Level.FAIL
    assert check_hf_token("p", "org/r", None, True, None, False, None).level is Level.OK
    assert check_hf_token("p", "org/r", None, False, None, False, "no network").level is Level.WARN
    needs = [WeightsNeed("a", True, 10 * GIB), WeightsNeed("b", False, 10 * GIB)]
    assert check_disk("/c", 5 * GIB, needs, GIB).level is Level.FAIL
    assert check_disk("/c", 15 * GIB, needs, GIB).level is Level.WARN
    assert check_disk("/c", 30 * GIB, needs, GIB).level is Level.OK


def test_litellm_callback() -> None:
    good = "litellm_settings:\n  callbacks: gpumgr.integrations.litellm.status_filter\n"
    assert check_litellm("c.yaml", good, None).level is Level.OK
    # LiteLLM imports module.instance: a name after status_filter is a module that does not exist
    wrong = "litellm_settings:\n  callbacks: [gpumgr.integrations.litellm.status_filter.status_filter]\n"
    assert check_litellm("c.yaml", wrong, None).level is Level.FAIL


def test_doctor_suggests_the_callback_path_litellm_can_import() -> None:
    import importlib

    check = check_litellm("c.yaml", "litellm_settings:\n  callbacks: [other.x]\n", None)
    assert "callbacks: [gpumgr.integrations.litellm.status_filter]" in check.fix
    module, _, instance = "gpumgr.integrations.litellm.status_filter".rpartition(".")
    assert hasattr(importlib.import_module(module), instance)  # what LiteLLM's loader does
    assert check_litellm("c.yaml", "litellm_settings:\n  callbacks: [other.x]\n", None).level is Level.FAIL
    assert check_litellm("c.yaml", None, "No such file").level is Level.FAIL


# -- the runner on a real configuration, real servers --------------------------------------------


def _config(tmp: Path, *, ollama_url: str, cloud_url: str, vllm_port: int, status_port: int,
            vllm_command: str) -> Path:
    cfg = tmp / "config"
    cfg.mkdir()
    (cfg / "providers.yaml").write_text(f"""providers:
  ollama:
    type: ollama
    base_url: {ollama_url}
    status: active
    models: [llama3.1:latest]
  cloud:
    type: ollama_cloud
    base_url: {cloud_url}
    status: active
    env_var: DOCTOR_TEST_CLOUD_KEY
    models: [gpt-oss:120b]
  qwen-7b:
    type: vllm
    base_url: http://127.0.0.1:{vllm_port}
    status: active
    models:
      - name: qwen-coder-vllm
        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
        model_size_gb: 5.2
""")
    (cfg / "gpumgr.yaml").write_text(
        f"listen: 127.0.0.1:{status_port}\nruntime_dir: {tmp}/run\nstate_dir: {tmp}/state\n"
        f"log_dir: {tmp}/log\ncache_dir: {tmp}/cache\nvllm:\n  command: {vllm_command}\n"
        "hub:\n  endpoint: http://127.0.0.1:9\n")
    return cfg


def _cloud(request: Request) -> Reply:
    if request.headers.get("Authorization") != f"Bearer {KEY}":
        return Reply(401, {"error": f"unauthorized: {request.headers.get('Authorization')}"})
    return Reply(200, {"models": [{"name": "gpt-oss:120b"}, {"name": "qwen3-coder:480b"}]})


def _fake_systemctl(tmp: Path, active: str, enabled: str) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir()
    exe = bindir / "systemctl"
    exe.write_text(f"#!/bin/sh\ncase \"$1\" in is-active) echo {active}; exit 3;; "
                   f"is-enabled) echo {enabled}; exit 1;; esac\nexit 1\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return bindir


def test_runner_reports_every_service_accurately(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    vllm_port = taken.getsockname()[1]
    litellm = tmp_path / "litellm.yaml"
    litellm.write_text("litellm_settings:\n  callbacks: [gpumgr.integrations.litellm.status_filter]\n")
    bindir = _fake_systemctl(tmp_path, "inactive", "disabled")
    try:
        with running_sim_ollama(["llama3.1:latest"], loaded=["llama3.1:latest"],
                                env={"OLLAMA_MAX_LOADED_MODELS": "1"}) as ollama, \
                JsonServer(_cloud) as cloud:
            cfg = _config(tmp_path, ollama_url=ollama.base_url, cloud_url=cloud.base_url,
                          vllm_port=vllm_port, status_port=free_port(),
                          vllm_command=f"{sys.executable} -m gpumgr.sim.vllm")
            env = {"PATH": f"{bindir}:{os.environ['PATH']}", "DOCTOR_TEST_CLOUD_KEY": KEY,
                   "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "HOME": str(tmp_path)}
            t0 = time.monotonic()
            report = run_doctor(DoctorOptions(config_dir=str(cfg), env=env,
                                              gpu_backend=FixedGpu(NO_DRIVER),
                                              litellm_config=str(litellm)))
            elapsed = time.monotonic() - t0
            cloud_auth = [r.headers.get("Authorization") for r in cloud.received]
    finally:
        taken.close()
    by = {c.name: c for c in report.checks}
    assert by["config"].level is Level.OK
    assert by["gpu.nvml"].level is Level.FAIL and "580" in by["gpu.nvml"].fix
    assert by["vllm.qwen-7b"].level is Level.OK and "0.33.0" in by["vllm.qwen-7b"].summary
    assert by[f"port.{vllm_port}"].level is Level.FAIL and "gpumgr did not start" in \
        by[f"port.{vllm_port}"].summary
    assert by["ollama.ollama"].level is Level.OK
    assert by["ollama.ollama.settings"].level is Level.OK, by["ollama.ollama.settings"]
    assert by["ollama.ollama.placement"].level is Level.OK
    assert by["cloud.cloud"].level is Level.OK and "2 models" in by["cloud.cloud"].summary
    assert cloud_auth == [f"Bearer {KEY}"], "one GET /api/tags, nothing else"
    assert [r.path for r in cloud.received] == ["/api/tags"]
    assert by["systemd"].level is Level.WARN and "inactive" in by["systemd"].summary
    assert by["daemon"].level is Level.WARN
    assert by["hf.qwen-7b"].level is Level.WARN  # the hub endpoint does not answer
    assert by["weights.qwen-7b"].level is Level.WARN
    assert by["disk.cache"].level in (Level.OK, Level.WARN, Level.FAIL)
    assert by["litellm"].level is Level.OK
    assert report.failed
    assert KEY not in json.dumps(report.to_dict())
    assert elapsed < 30


def test_a_rejected_cloud_key_fails_and_is_never_printed(tmp_path: Path) -> None:
    with JsonServer(_cloud) as cloud:
        cfg = _config(tmp_path, ollama_url="http://127.0.0.1:9", cloud_url=cloud.base_url,
                      vllm_port=free_port(), status_port=free_port(), vllm_command="/nonexistent/vllm")
        wrong = "oc-wrong-" + "x" * 30
        env = {"PATH": os.environ["PATH"], "DOCTOR_TEST_CLOUD_KEY": wrong, "HOME": str(tmp_path)}
        report = run_doctor(DoctorOptions(config_dir=str(cfg), env=env,
                                          gpu_backend=FixedGpu(NO_DRIVER), systemctl=None))
    by = {c.name: c for c in report.checks}
    assert by["cloud.cloud"].level is Level.FAIL and "rejected" in by["cloud.cloud"].summary
    assert by["vllm.qwen-7b"].level is Level.FAIL and "not found" in by["vllm.qwen-7b"].summary
    assert by["systemd"].summary == "no systemd (systemctl not found)"
    assert by["ollama.ollama"].level is Level.FAIL
    assert wrong not in json.dumps(report.to_dict())


def test_cli_exit_status_and_json_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path, ollama_url="http://127.0.0.1:9", cloud_url="http://127.0.0.1:9",
                  vllm_port=free_port(), status_port=free_port(), vllm_command="/nonexistent/vllm")
    monkeypatch.setenv("PATH", str(_fake_systemctl(tmp_path, "active", "enabled")) + ":" +
                       os.environ["PATH"])
    result = CliRunner().invoke(main, ["doctor", "--config-dir", str(cfg), "--json"])
    doc = json.loads(result.stdout)
    assert result.exit_code == 1  # this machine has no NVIDIA driver: a fail
    assert doc["ok"] is False and doc["counts"]["fail"] >= 1
    assert {"name", "status", "summary", "fix"} <= doc["checks"][0].keys()
    nvml = next(c for c in doc["checks"] if c["name"] == "gpu.nvml")
    assert nvml["status"] in ("fail", "ok")
