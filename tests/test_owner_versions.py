"""Every version of the owner's registry validates unchanged (issue 17).

``tests/data/owner-dialect/versions`` holds the earlier forms of the owner's registry: chains
that list providers (v1), a llama.cpp provider with no ``models:`` list (v2), and the current
file whose capability names a provider by mistake (v3: a warning with the fix, never an error).
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gpumgr.cli import main

VERSIONS = Path(__file__).resolve().parent / "data" / "owner-dialect" / "versions"
SLIP = ("model-mappings.yaml:18:24: warning: capabilities.large_context.preferred_models[0]: "
        "'llama_cpp_python' is a provider; it serves 'llama-cpp-default'")  # fmt: skip
KEY_LINE = {"v1-provider-chains": 32, "v2-no-models-list": 37, "v3-current": 37}
"""Where each version names its Ollama Cloud key ``OLLAMA_API_KEY`` (a warning: LiteLLM would
send it to the local Ollama too; tests/test_cloud_key_name.py)."""


def _key_warning(version: str) -> str:
    return f"providers.yaml:{KEY_LINE[version]}:5: warning: providers.ollama-cloud.env_var: "


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args), env=env)
    return r.exit_code, r.stdout, r.stderr if r.stderr_bytes is not None else ""


@pytest.mark.parametrize("version", sorted(p.name for p in VERSIONS.iterdir()))
def test_every_version_of_the_owners_registry_validates_with_exit_0(version: str) -> None:
    code, out, err = _run("validate", "--config-dir", str(VERSIONS / version))
    assert code == 0, err
    assert out.startswith("ok: ")
    if version != "v3-current":
        (line,) = err.splitlines()  # the key's name, nothing about the registry's dialect
        assert line.startswith(_key_warning(version))


def test_a_capability_naming_a_provider_warns_with_the_model_it_serves() -> None:
    code, _, err = _run("validate", "--config-dir", str(VERSIONS / "v3-current"))
    assert code == 0
    key, slip = err.splitlines()
    assert key.startswith(_key_warning("v3-current"))
    assert slip == SLIP + ": name a model here"


def test_strict_makes_the_warning_exit_2() -> None:
    code, _, err = _run("validate", "--strict", "--config-dir", str(VERSIONS / "v3-current"))
    assert code == 2
    assert SLIP in err


def test_litellm_config_leaves_the_slip_out_with_a_comment_saying_why() -> None:
    code, out, _ = _run("litellm-config", "--config-dir", str(VERSIONS / "v3-current"))
    assert code == 0
    comments = [line for line in out.splitlines() if line.startswith("#")]
    assert any("'llama_cpp_python' is a provider; it serves 'llama-cpp-default'" in c
               for c in comments)  # fmt: skip
    cfg = yaml.safe_load(out)
    assert cfg["router_settings"]["model_group_alias"]["large_context"] == "gpt-oss:120b-cloud"
    assert "llama_cpp_python" not in out.split("model_list:", 1)[1].replace(
        "gpumgr_backend: llama_cpp_python", "")


def test_a_provider_without_a_models_list_serves_the_router_name_pointed_at_it() -> None:
    code, out, _ = _run("litellm-config", "--config-dir", str(VERSIONS / "v2-no-models-list"))
    assert code == 0
    entry = next(m for m in yaml.safe_load(out)["model_list"]
                 if m["model_name"] == "llama-cpp-default")  # fmt: skip
    assert entry["litellm_params"]["model"] == "openai/llama-cpp-default"
    assert entry["litellm_params"]["api_base"] == "http://127.0.0.1:8080/v1"
    assert entry["model_info"] == {"gpumgr_backend": "llama_cpp_python"}


def test_a_chain_entry_naming_a_provider_means_that_providers_model() -> None:
    _, out, _ = _run("litellm-config", "--config-dir", str(VERSIONS / "v1-provider-chains"))
    router = yaml.safe_load(out)["router_settings"]
    assert router["fallbacks"][0] == {"qwen-coder-vllm": ["qwen2.5-coder:7b", "gpt-oss:120b-cloud"]}
    assert router["default_fallbacks"] == ["qwen2.5-coder:7b", "gpt-oss:120b-cloud"]
    _, out, _ = _run("litellm-config", "--config-dir", str(VERSIONS / "v2-no-models-list"))
    router = yaml.safe_load(out)["router_settings"]
    assert router["fallbacks"][0] == {
        "qwen-coder-vllm": ["qwen2.5-coder:7b", "llama-cpp-default", "gpt-oss:120b-cloud"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_plan_runs_on_the_version_with_the_slip(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    shutil.copytree(VERSIONS / "v3-current", cfg)
    path = cfg / "providers.yaml"
    path.write_text(path.read_text().replace(":11434", f":{_free_port()}")
                    .replace(":8080", f":{_free_port()}"))  # fmt: skip
    env = {"GPUMGR_CONFIG_DIR": str(cfg), "GPUMGR_SIM_GPU_STATE": str(tmp_path / "gpu.json"),
           "GPUMGR_SIMULATE": "1"}  # fmt: skip
    for d in ("RUNTIME", "STATE", "LOG", "CACHE"):
        env[f"GPUMGR_{d}_DIR"] = str(tmp_path / d.lower())
    code, out, err = _run("plan", "--json", env=env)
    assert code == 0, err
    (inst,) = json.loads(out)["gpus"][0]["instances"]
    assert inst["provider"] == "vllm-qwen"


def test_type_ollama_at_a_remote_https_url_with_a_key_variable_is_the_cloud() -> None:
    from gpumgr.config import ProviderType, load_config
    from gpumgr.engines.probes import is_cloud

    cfg = load_config(VERSIONS / "v2-no-models-list", env={})
    cloud, local = cfg.provider("ollama-cloud"), cfg.provider("ollama")
    assert cloud.type is ProviderType.OLLAMA_CLOUD and is_cloud(cloud)
    assert local.type is ProviderType.OLLAMA and not is_cloud(local)


def test_type_ollama_without_a_key_or_on_this_machine_stays_a_local_ollama(tmp_path: Path) -> None:
    from gpumgr.config import ProviderType, load_config

    (tmp_path / "providers.yaml").write_text(
        "providers:\n"
        "  lan:\n    type: ollama\n    base_url: https://ollama.lan:443\n    models: [a]\n"
        "  tls-here:\n    type: ollama\n    base_url: https://localhost:11435\n"
        "    env_var: OLLAMA_API_KEY\n    models: [b]\n")  # fmt: skip
    cfg = load_config(tmp_path, env={})
    assert cfg.provider("lan").type is ProviderType.OLLAMA
    assert cfg.provider("tls-here").type is ProviderType.OLLAMA


def test_doctor_advice_fits_the_backend() -> None:
    from gpumgr.doctor.checks_services import check_ollama_reachable

    here = check_ollama_reachable("ollama", "http://127.0.0.1:11434", None, "refused", True)
    assert "systemctl start ollama" in here.fix
    there = check_ollama_reachable("lan", "http://ollama.lan:11434", None, "refused", True)
    assert "systemctl" not in there.fix and "ollama.lan" in there.fix


def test_the_daemon_runs_on_the_version_with_the_slip_and_logs_the_warning(tmp_path: Path) -> None:
    from gpumgr.sim.harness import FAST_LIFECYCLE_YAML, DaemonHarness

    text = (VERSIONS / "v3-current" / "providers.yaml").read_text()
    for port in (":8001", ":8080", ":11434"):
        text = text.replace(port, f":{_free_port()}")
    harness = DaemonHarness(tmp_path, text, FAST_LIFECYCLE_YAML)
    (harness.config_dir / "model-mappings.yaml").write_text(
        (VERSIONS / "v3-current" / "model-mappings.yaml").read_text())
    try:
        harness.start()
        warned = [e for e in harness.events() if e.get("event") == "config.warning"]
        assert any("'llama_cpp_python' is a provider" in str(e.get("issue")) for e in warned)
        backends = {b["name"]: b for b in harness.status()["backends"]}
        assert backends["ollama-cloud"]["type"] == "ollama_cloud"  # reported as the cloud
        assert backends["llama_cpp_python"]["type"] == "llama_cpp"
    finally:
        harness.cleanup(check_log=False)
