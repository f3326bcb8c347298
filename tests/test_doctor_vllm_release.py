"""``gpumgr doctor`` checks each vLLM provider against the release its command reports (the
simulated engine's ``--version``), applies the Turing rules for its card, and says which engine
endpoints answer without the API key."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gpumgr.doctor import Level
from gpumgr.doctor.checks_vllm import check_endpoints, check_release
from gpumgr.doctor.runner import DoctorOptions, run_doctor
from gpumgr.gpu import GpuInfo, GpuInventory
from gpumgr.vllm_tables.releases import release_for

QUADRO = GpuInfo(index=0, uuid="GPU-5f2e", name="Quadro RTX 5000", memory_total_bytes=16384 << 20,
                 memory_used_bytes=300 << 20, memory_free_bytes=16084 << 20,
                 compute_capability="7.5")  # fmt: skip


class FixedGpu:
    def __init__(self, inv: GpuInventory) -> None:
        self.inv = inv

    def read(self) -> GpuInventory:
        return self.inv


def _config(tmp: Path, extra_args: str) -> Path:
    cfg = tmp / "config"
    cfg.mkdir()
    (cfg / "providers.yaml").write_text(f"""providers:
  qwen-7b:
    type: vllm
    base_url: http://127.0.0.1:1
    status: active
    extra_args: {extra_args}
    models:
      - name: qwen-coder-vllm
        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
        quantization: AWQ
""")
    (cfg / "gpumgr.yaml").write_text(
        f"listen: 127.0.0.1:1\nruntime_dir: {tmp}/run\nstate_dir: {tmp}/state\n"
        f"log_dir: {tmp}/log\ncache_dir: {tmp}/cache\n"
        f"vllm:\n  command: {sys.executable} -m gpumgr.sim.vllm\nhub:\n  endpoint: http://127.0.0.1:9\n")
    return cfg


def _doctor(tmp: Path, version: str, extra_args: str) -> dict[str, object]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
           "HOME": str(tmp), "GPUMGR_SIM_VLLM_VERSION": version}  # fmt: skip
    report = run_doctor(DoctorOptions(config_dir=str(_config(tmp, extra_args)), env=env,
                                      gpu_backend=FixedGpu(GpuInventory("nvml", (QUADRO,),
                                                                        driver_version="580.1")),
                                      systemctl=None))  # fmt: skip
    return {c.name: c for c in report.checks}


def test_an_unknown_newer_release_is_allowed_with_a_warning_and_the_newest_table(
    tmp_path: Path,
) -> None:
    by = _doctor(tmp_path, "0.35.2", "[--max-num-inflight-kv-loads, '2']")
    release = by["vllm.qwen-7b.release"]
    assert release.level is Level.WARN and "newer than the tables" in release.summary  # type: ignore[attr-defined]
    assert "0.34.0" in release.summary  # type: ignore[attr-defined]
    card = by["vllm.qwen-7b.card"]
    assert card.level is Level.WARN and "V2 model runner" in card.summary  # type: ignore[attr-defined]
    assert (tmp_path / "state" / "vllm-versions.json").is_file()


def test_on_0_33_a_0_34_flag_fails_and_an_fp8_kv_cache_on_turing_fails(tmp_path: Path) -> None:
    by = _doctor(tmp_path, "0.33.0", "[--kv-cache-dtype, fp8, --max-num-inflight-kv-loads, '2']")
    release = by["vllm.qwen-7b.release"]
    assert release.level is Level.FAIL and "--max-num-inflight-kv-loads" in release.summary  # type: ignore[attr-defined]
    card = by["vllm.qwen-7b.card"]
    assert card.level is Level.FAIL and "vllm#47549" in card.summary  # type: ignore[attr-defined]
    assert by["vllm.endpoints"].level is Level.OK  # type: ignore[attr-defined]


def test_the_endpoint_check_names_0_34s_checkpoint_routes_and_warns_with_sleep_mode() -> None:
    c = check_endpoints([release_for("0.34.0")], sleep_mode=True)
    assert c.level is Level.WARN and "/checkpoint/*" in c.summary and "/sleep" in c.summary
    assert "/checkpoint/*" not in check_endpoints([release_for("0.33.0")], False).summary


def test_a_known_release_says_which_memory_model_applies() -> None:
    assert "extensible KV cache" in check_release("q", release_for("0.34.0"), []).summary
    assert "start refused" in check_release("q", release_for("0.33.0"), []).summary
