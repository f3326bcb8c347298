"""The vLLM command line and environment built for a provider and its plan."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from vllm_fixtures import UUID, vllm_provider

from gpumgr.config.registry import Provider
from gpumgr.config.settings import VllmSettings
from gpumgr.engines.vllm import GpuFacts, build_vllm_launch, resolve_vllm_command
from gpumgr.errors import InputError

SIM = [sys.executable, "-m", "gpumgr.sim.vllm"]


def _launch(provider: Provider | None = None, capability: str = "7.5", **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "fraction": 0.62,
        "snapshot_dir": Path("/cache/qwen7b/snap"),
        "gpu": GpuFacts(UUID, capability),
        "settings": VllmSettings(),
        "base_env": {"PATH": "/usr/bin"},
    }
    args.update(kw)
    return build_vllm_launch(provider or vllm_provider(), **args)  # type: ignore[arg-type]


def test_reference_box_command_line_is_the_documented_one() -> None:
    launch = _launch(command=SIM)
    assert launch.argv == [
        *SIM, "serve", "/cache/qwen7b/snap", "--served-model-name", "qwen-coder-vllm",
        "--host", "127.0.0.1", "--port", "8001", "--gpu-memory-utilization", "0.62",
        "--max-model-len", "8192", "--max-num-seqs", "16", "--dtype", "half",
        "--quantization", "awq_marlin",
    ]  # fmt: skip


def test_dtype_half_only_below_compute_capability_8() -> None:
    assert "--dtype" in _launch(capability="7.5").argv
    assert "--dtype" not in _launch(capability="8.0").argv


def test_planned_values_override_the_provider_and_fraction_is_never_rounded_up() -> None:
    argv = _launch(fraction=0.61999, max_model_len=4096, max_num_seqs=4).argv
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.6199"
    assert argv[argv.index("--max-model-len") + 1] == "4096"
    assert argv[argv.index("--max-num-seqs") + 1] == "4"
    for planned, shown in [(0.57, "0.57"), (0.29, "0.29"), (1.0, "1"), (0.0001, "0.0001")]:
        argv = _launch(fraction=planned).argv
        assert argv[argv.index("--gpu-memory-utilization") + 1] == shown


def test_quantization_awq_marlin_for_awq_else_the_providers_else_none() -> None:
    plain = vllm_provider(models=[{"name": "org/plain-model"}])
    assert "--quantization" not in _launch(plain).argv
    assert "awq_marlin" in _launch(plain, checkpoint_quantization="awq").argv
    argv = _launch(vllm_provider(quantization="AWQ")).argv
    assert argv[argv.index("--quantization") + 1] == "awq"
    argv = _launch(vllm_provider(quantization="gptq_marlin")).argv
    assert argv[argv.index("--quantization") + 1] == "gptq_marlin"


def test_switches_and_extra_args_follow_the_provider() -> None:
    provider = vllm_provider(enforce_eager=True, enable_sleep_mode=True,
                         extra_args=["--enable-prefix-caching"])  # fmt: skip
    launch = _launch(provider)
    assert "--enforce-eager" in launch.argv
    assert "--enable-sleep-mode" in launch.argv
    assert launch.argv[-1] == "--enable-prefix-caching"
    assert launch.env["VLLM_SERVER_DEV_MODE"] == "1"
    assert "--enforce-eager" not in _launch().argv


def test_served_names_are_every_model_name_and_alias() -> None:
    provider = vllm_provider(models=[{"name": "qwen-coder-vllm", "aliases": ["coder", "qwen"]}])
    argv = _launch(provider).argv
    i = argv.index("--served-model-name")
    assert argv[i + 1 : i + 4] == ["qwen-coder-vllm", "coder", "qwen"]


def test_environment_pins_the_gpu_by_uuid_goes_offline_and_drops_systemd_variables() -> None:
    env = _launch(base_env={"PATH": "/usr/bin", "NOTIFY_SOCKET": "/run/systemd/notify",
                            "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).env  # fmt: skip
    assert env["CUDA_VISIBLE_DEVICES"] == UUID
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PATH"] == "/usr/bin"
    assert not {k for k in env if k == "NOTIFY_SOCKET" or k.startswith("WATCHDOG_")}


def test_api_key_reaches_vllm_through_the_environment_never_the_argv() -> None:
    provider = vllm_provider(requires_api_key=True, env_var="QWEN_KEY")
    launch = _launch(provider, base_env={"QWEN_KEY": "sk-very-secret"})
    assert launch.env["VLLM_API_KEY"] == "sk-very-secret"
    assert not any("sk-very-secret" in token for token in launch.argv)
    assert "VLLM_API_KEY" not in launch.display_env
    with pytest.raises(InputError, match=r"\$QWEN_KEY is not set"):
        _launch(provider, base_env={})


def test_executable_precedence_command_then_vllm_bin_then_venv_then_settings(tmp_path: Path) -> None:
    venv_bin = tmp_path / "bin" / "vllm"
    venv_bin.parent.mkdir()
    venv_bin.write_text("#!/bin/sh\n")
    venv_bin.chmod(0o755)
    settings = VllmSettings(command="/opt/vllm/bin/python -m vllm.entrypoints.cli.main")
    located = vllm_provider(location=str(tmp_path))
    assert resolve_vllm_command(located, settings, SIM) == SIM
    bin_given = vllm_provider(vllm_bin="/x/vllm", location=str(tmp_path))
    assert resolve_vllm_command(bin_given, settings) == ["/x/vllm"]
    assert resolve_vllm_command(located, settings) == [str(venv_bin)]
    no_venv = vllm_provider(location=str(tmp_path / "missing"))
    assert resolve_vllm_command(no_venv, settings) == [
        "/opt/vllm/bin/python", "-m", "vllm.entrypoints.cli.main"]  # fmt: skip
    assert resolve_vllm_command(vllm_provider(), VllmSettings()) == ["vllm"]


def test_a_provider_without_a_length_or_a_port_cannot_be_launched() -> None:
    with pytest.raises(InputError, match="max_model_len"):
        _launch(vllm_provider(max_model_len=None, models=[{"name": "org/m"}]))
    with pytest.raises(InputError, match="not vllm"):
        _launch(vllm_provider(type="ollama"))
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        _launch(fraction=1.5)


def test_the_child_gets_only_its_own_key_and_never_the_hub_token_or_other_providers_keys() -> None:
    from pathlib import Path

    from gpumgr.config.settings import VllmSettings
    from gpumgr.engines.vllm import GpuFacts, build_vllm_launch

    provider = vllm_provider(requires_api_key=True, env_var="QWEN_KEY")
    env = {"PATH": "/usr/bin", "QWEN_KEY": "own-key-1", "OLLAMA_CLOUD_API_KEY": "cloud-key-2",
           "HF_TOKEN": "hf_token_3"}
    launch = build_vllm_launch(
        provider, fraction=0.5, snapshot_dir=Path("/snap"), gpu=GpuFacts("GPU-x"),
        settings=VllmSettings(), base_env=env,
        withheld_env={"QWEN_KEY", "OLLAMA_CLOUD_API_KEY"},
    )
    assert launch.env["VLLM_API_KEY"] == "own-key-1"
    assert launch.env["PATH"] == "/usr/bin"
    for secret in ("own-key-1", "cloud-key-2", "hf_token_3"):
        assert secret not in launch.argv
    assert {"QWEN_KEY", "OLLAMA_CLOUD_API_KEY", "HF_TOKEN"}.isdisjoint(launch.env)
