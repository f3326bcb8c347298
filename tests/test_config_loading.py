"""The registry loads the user's existing files unchanged; precedence is applied in one place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumgr.config import ConfigError, load_config
from gpumgr.config.paths import resolve_listen, resolve_paths, resolve_simulate
from gpumgr.config.settings import Settings
from gpumgr.errors import GpumgrError

USER_STYLE_REGISTRY = """\
metadata:
  version: "1.4"
  owner: platform team
health_checks:
  interval_seconds: 30
  timeout_seconds: 5
  retry_attempts: 2
providers:
  local_ollama:
    type: ollama
    base_url: http://localhost:11434
    status: active
    description: Ollama on the workstation
    features: [chat, embeddings]
    docs: https://github.com/ollama/ollama
    models:
      - qwen2.5-coder:7b
      - name: llama3.1:latest
        size: 8B
        specialty: chat
        context_length: 131072
        notes: {loaded_by_default: true}
  vllm_qwen:
    type: vllm
    base_url: http://localhost:8001/v1
    status: standby
    location: /opt/vllm
    gpu_memory_utilization: 0.85
    max_model_len: 8192
    hardware_requirements: {min_vram_gb: 8, gpu: "RTX 5000"}
    models:
      - name: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
        quantization: AWQ
        model_size_gb: 5.2
  cloud:
    type: ollama_cloud
    base_url: https://ollama.com
    status: active
    requires_api_key: true
    env_var: OLLAMA_CLOUD_API_KEY
    models: [gpt-oss:120b-cloud]
  my_template:
    type: openai_compatible
    base_url: http://HOSTNAME:PORT/v1
    status: template
    models: [model-a]
  anthropic:
    type: anthropic
    base_url: https://api.anthropic.com
    status: disabled
    requires_api_key: true
    env_var: ANTHROPIC_API_KEY
    models: [claude-sonnet]
    pricing: {input: 3, output: 15}
"""


def test_registry_in_the_users_existing_style_loads_and_keeps_descriptive_keys(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text(USER_STYLE_REGISTRY)
    cfg = load_config(tmp_path, env={})
    qwen = cfg.providers["vllm_qwen"]
    assert qwen.hf_repo == "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"  # the name looks like org/repo
    assert qwen.model_extra and qwen.model_extra["hardware_requirements"]["min_vram_gb"] == 8
    assert (cfg.providers["local_ollama"].models[1].model_extra or {})["notes"] == {"loaded_by_default": True}
    assert cfg.providers["my_template"].base_url == "http://HOSTNAME:PORT/v1"
    assert cfg.providers_file.health_checks.retry_attempts == 2
    assert cfg.providers_file.metadata == {"version": "1.4", "owner": "platform team"}
    assert cfg.summary() == "ok: 5 providers (1 vllm), 6 models, 0 chains"


def test_example_configuration_validates() -> None:
    cfg = load_config(Path(__file__).parent.parent / "config", env={})
    assert cfg.providers["qwen-7b"].hf_repo == "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
    assert cfg.providers["qwen-7b"].port == cfg.providers["qwen-14b"].port == 8001
    assert cfg.providers["deepseek-6.7b"].served_names == ["deepseek-coder-6.7b-vllm"]


def test_validate_command_in_a_real_process_prints_one_line_per_error_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text("providers:\n  a:\n    type: vllm\n    base_url: http://127.0.0.1:0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gpumgr.cli", "validate", "--config-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == (
        "providers.yaml:4:5: providers.a.base_url: port must be 1-65535 (got 'http://127.0.0.1:0')"
    )


def test_directory_precedence_is_flag_then_env_then_file_then_systemd_then_default(tmp_path: Path) -> None:
    home = tmp_path / "home"
    yaml_settings = Settings(state_dir="/from/yaml")
    env = {"GPUMGR_STATE_DIR": "/from/env", "STATE_DIRECTORY": "/from/systemd", "RUNTIME_DIRECTORY": "/run/sd:/other"}
    p = resolve_paths(yaml_settings, env, is_root=True, home=home, flags={"state_dir": "/from/flag"})
    assert p.state_dir == Path("/from/flag")
    p = resolve_paths(yaml_settings, env, is_root=True, home=home)
    assert p.state_dir == Path("/from/env")
    p = resolve_paths(yaml_settings, {"STATE_DIRECTORY": "/from/systemd"}, is_root=True, home=home)
    assert p.state_dir == Path("/from/yaml")
    p = resolve_paths(Settings(), env, is_root=True, home=home)
    assert p.runtime_dir == Path("/run/sd")
    p = resolve_paths(Settings(), {}, is_root=True, home=home)
    assert (p.runtime_dir, p.state_dir, p.log_dir, p.cache_dir) == (
        Path("/run/gpumgr"), Path("/var/lib/gpumgr"), Path("/var/log/gpumgr"), Path("/var/cache/gpumgr"))
    p = resolve_paths(Settings(), {"XDG_CACHE_HOME": "/x/cache"}, is_root=False, home=home)
    assert p.cache_dir == Path("/x/cache/gpumgr")
    assert p.state_dir == home / ".local/state/gpumgr"


def test_listen_and_simulation_precedence() -> None:
    s = Settings(listen="127.0.0.1:9500")
    assert resolve_listen(s, {"GPUMGR_LISTEN": "127.0.0.1:9600"}, "127.0.0.1:9700") == "127.0.0.1:9700"
    assert resolve_listen(s, {"GPUMGR_LISTEN": "127.0.0.1:9600"}) == "127.0.0.1:9600"
    assert resolve_listen(s, {}) == "127.0.0.1:9500"
    assert resolve_simulate({"GPUMGR_SIMULATE": "1"}) and resolve_simulate({}, True)
    assert not resolve_simulate({"GPUMGR_SIMULATE": "0"})


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
documents = st.one_of(
    yaml_values.map(lambda v: yaml.safe_dump(v)),
    st.dictionaries(st.sampled_from(["providers", "metadata", "health_checks"]), yaml_values, max_size=3).map(yaml.safe_dump),
    st.text(max_size=200),
    st.binary(max_size=200),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(providers=documents, mappings=documents, own=documents)
def test_random_documents_give_a_config_or_the_projects_own_error(
    tmp_path: Path, providers: str | bytes, mappings: str | bytes, own: str | bytes
) -> None:
    for name, content in (("providers.yaml", providers), ("model-mappings.yaml", mappings), ("gpumgr.yaml", own)):
        data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
        (tmp_path / name).write_bytes(data)
    try:
        load_config(tmp_path, env={})
    except ConfigError as exc:
        assert exc.issues and all(str(i) for i in exc.issues)
    except GpumgrError:
        raise AssertionError("a config problem must be a ConfigError")
