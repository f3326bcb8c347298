"""An engine's environment is built from an allow-list (``gpumgr.runtime``): the control token
and every other secret stay with the daemon unless the provider declares them; the daemon's
environment is read once and never written. The end-to-end test reads a real simulated
engine's ``/proc/<pid>/environ``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from vllm_fixtures import UUID, vllm_provider

from gpumgr.sim.harness import FAST_HEALTH_YAML, FAST_LIFECYCLE_YAML, DaemonHarness, free_port
from gpumgr.config import load_config
from gpumgr.config.settings import VllmSettings
from gpumgr.daemon import open_inventory
from gpumgr.engines.vllm import GpuFacts, build_vllm_launch
from gpumgr.runtime import RuntimeEnv, engine_environment, engine_may_inherit

TOKEN = "ctl-token-0123456789abcdef"
DAEMON_ENV = {
    "PATH": "/usr/bin", "HOME": "/var/lib/gpumgr", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
    "TZ": "UTC", "CUDA_CACHE_PATH": "/c", "NVIDIA_DRIVER_CAPABILITIES": "compute",
    "HF_HOME": "/hf", "VLLM_ATTENTION_BACKEND": "FLASHINFER", "NCCL_P2P_DISABLE": "1",
    "TRITON_CACHE_DIR": "/t", "TORCH_CUDA_ARCH_LIST": "7.5", "XDG_CACHE_HOME": "/x",
    "GPUMGR_SIM_TOKEN_DELAY_S": "0.1",
    # everything below must stay with the daemon
    "GPUMGR_CONTROL_TOKEN": TOKEN, "AWS_SECRET_ACCESS_KEY": "aws-secret", "HF_TOKEN": "hf-tok",
    "HUGGING_FACE_HUB_TOKEN": "hf-tok-2", "HF_TOKEN_PATH": "/secret/hf", "VLLM_API_KEY": "leak",
    "OPENAI_API_KEY": "sk-other", "DATABASE_URL": "postgres://u:p@h/db",
    "CREDENTIALS_DIRECTORY": "/run/credentials/gpumgr.service", "NOTIFY_SOCKET": "/run/notify",
    "GPUMGR_LISTEN": "0.0.0.0:9000", "NCCL_AUTH_KEY": "k", "TORCH_SECRET": "s",
}
KEPT = {k for k in DAEMON_ENV if DAEMON_ENV[k] not in
        {TOKEN, "aws-secret", "hf-tok", "hf-tok-2", "/secret/hf", "leak", "sk-other",
         "postgres://u:p@h/db", "/run/credentials/gpumgr.service", "/run/notify", "0.0.0.0:9000",
         "k", "s"}}


def test_the_allow_list_keeps_what_a_cuda_program_needs_and_drops_every_secret() -> None:
    assert set(engine_environment(DAEMON_ENV)) == KEPT
    assert engine_may_inherit("GPUMGR_SPAWN_MARKER")  # gpumgr's own variable


def test_a_launch_gets_the_allow_list_its_declared_env_and_its_own_key_only() -> None:
    provider = vllm_provider(requires_api_key=True, env_var="QWEN_KEY",
                             env={"MY_TUNING": "3", "HF_HUB_ENABLE_HF_TRANSFER": "1"})
    launch = build_vllm_launch(
        provider, fraction=0.5, snapshot_dir=Path("/snap"), gpu=GpuFacts(UUID),
        settings=VllmSettings(), base_env={**DAEMON_ENV, "QWEN_KEY": "own-key"},
    )  # fmt: skip
    env = launch.env
    assert env["VLLM_API_KEY"] == "own-key"  # declared: requires_api_key + env_var
    assert env["MY_TUNING"] == "3" and env["HF_HUB_ENABLE_HF_TRANSFER"] == "1"  # declared env:
    assert env["CUDA_VISIBLE_DEVICES"] == UUID and env["HF_HUB_OFFLINE"] == "1"  # gpumgr's own
    extra = set(env) - KEPT - {"VLLM_API_KEY", "MY_TUNING", "HF_HUB_ENABLE_HF_TRANSFER",
                               "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "VLLM_NO_USAGE_STATS"}
    assert extra == set()
    for secret in (TOKEN, "aws-secret", "hf-tok", "sk-other", "leak"):
        assert secret not in env.values()


def test_the_runtime_env_is_a_frozen_copy_and_rereads_a_credential_each_time(
    tmp_path: Path,
) -> None:
    source = {"CREDENTIALS_DIRECTORY": str(tmp_path), "PATH": "/bin"}
    runtime = RuntimeEnv.of(source)
    source["PATH"] = "/changed"
    assert runtime.get("PATH") == "/bin"
    with pytest.raises(TypeError):
        runtime.environ["PATH"] = "/x"  # type: ignore[index]
    (tmp_path / "QWEN_KEY").write_text("first\n")
    assert runtime.secret("QWEN_KEY") == "first"
    (tmp_path / "QWEN_KEY").write_text("rotated\n")
    assert runtime.secret("QWEN_KEY") == "rotated"


def test_opening_the_simulated_inventory_leaves_the_daemons_environment_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "providers.yaml").write_text("providers: {}\n")
    (config_dir / "gpumgr.yaml").write_text("simulate:\n  load_seconds: 0.7\n")
    monkeypatch.setenv("GPUMGR_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("GPUMGR_SIM_GPU_STATE", raising=False)
    monkeypatch.delenv("GPUMGR_SIM_LOAD_SECONDS", raising=False)
    before = dict(os.environ)
    inventory = open_inventory(load_config(config_dir, simulate=True))
    assert dict(os.environ) == before
    assert inventory.engine_environment() == {  # type: ignore[attr-defined]
        "GPUMGR_SIM_GPU_STATE": str(tmp_path / "run" / "sim-gpu.json"),
        "GPUMGR_SIM_LOAD_SECONDS": "0.7",
    }


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.slow
def test_a_real_engine_never_sees_the_control_token_or_an_undeclared_secret(tmp_path: Path) -> None:
    port = free_port()
    providers = f"""providers:
  qwen:
    type: vllm
    base_url: http://127.0.0.1:{port}
    status: active
    max_model_len: 4096
    max_num_seqs: 4
    env:
      VLLM_LOGGING_LEVEL: DEBUG
      MY_ENGINE_TUNING: "7"
    models:
      - name: qwen-coder-vllm
        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
"""
    h = DaemonHarness(tmp_path, providers, FAST_HEALTH_YAML.format(restart_after_s=60)
                      + FAST_LIFECYCLE_YAML,
                      env={"GPUMGR_CONTROL_TOKEN": TOKEN, "AWS_SECRET_ACCESS_KEY": "aws-secret",
                           "HF_TOKEN": "hf-secret-token", "UNRELATED_SETTING": "x"})
    try:
        h.start()
        pid = int(h.wait_up("qwen", 60)["pid"])
        env = _environ(pid)
        assert "GPUMGR_CONTROL_TOKEN" not in env and TOKEN not in env.values()
        assert {"AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "UNRELATED_SETTING"}.isdisjoint(env)
        assert env["MY_ENGINE_TUNING"] == "7" and env["VLLM_LOGGING_LEVEL"] == "DEBUG"
        assert env["GPUMGR_SIM_GPU_STATE"] == str(h.sim_gpu_path)  # the card, given explicitly
        assert env["PATH"] == os.environ["PATH"]
        assert h.proc is not None and "GPUMGR_CONTROL_TOKEN" in _environ(h.proc.pid)
        assert h.stop() == 0
    finally:
        h.cleanup()


def test_a_reload_rereads_rotated_secrets_for_masking_and_logs_a_changed_control_token(
    tmp_path: Path,
) -> None:
    from structlog.testing import capture_logs

    from gpumgr.daemon import reread_secrets
    from gpumgr.logs import redact_text

    config_dir, creds = tmp_path / "config", tmp_path / "creds"
    config_dir.mkdir()
    creds.mkdir()
    (config_dir / "providers.yaml").write_text(
        "providers:\n  cloud:\n    type: openai\n    base_url: https://api.example.com/v1\n"
        "    status: active\n    requires_api_key: true\n    env_var: CLOUD_KEY\n"
        "    models: [m]\n"
    )
    token_file = tmp_path / "token"
    (config_dir / "gpumgr.yaml").write_text(f"control:\n  token_file: {token_file}\n")
    token_file.write_text("first-token-0123456789\n")
    runtime = RuntimeEnv.of({"CREDENTIALS_DIRECTORY": str(creds)})
    config = load_config(config_dir)
    (creds / "CLOUD_KEY").write_text("rotated-cloud-key-0123456789\n")
    token_file.write_text("second-token-0123456789\n")
    with capture_logs() as logs:
        reread_secrets(config, runtime, "first-token-0123456789")
    assert "rotated-cloud-key-0123456789" not in redact_text("key rotated-cloud-key-0123456789")
    assert "second-token-0123456789" not in redact_text("t second-token-0123456789")
    assert [e["event"] for e in logs] == ["control.token_changed"]
