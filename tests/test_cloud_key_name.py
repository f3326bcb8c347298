"""The Ollama Cloud key in ``$OLLAMA_API_KEY``: accepted, warned about, and kept from the local
Ollama by gpumgr's LiteLLM configs (config/cloud_key.py; DESIGN.md §6).

LiteLLM 1.108.7 sends ``$OLLAMA_API_KEY`` to every Ollama deployment without a key of its own
(litellm/main.py ``_complete_ollama_chat``). The owner names the cloud's key variable that way;
gpumgr takes the registry unchanged, says where and how to rename it, and its generated and
merged LiteLLM configs give the keyless Ollama entries ``api_key: none``. The last test shows on
a real proxy both the leak (a hand-written entry) and that the pinned entries do not leak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpumgr.sim.harness import FAST_LIFECYCLE_YAML, DaemonHarness, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
OWNER = REPO_ROOT / "tests" / "data" / "owner-dialect"
SECRET = "sk-cloud-0123456789abcdef"
LOCAL = "qwen2.5-coder:7b"
CLOUD = "gpt-oss:120b-cloud"


def registry(cloud_env_var: str = "OLLAMA_API_KEY", *, local: bool = True,
             ollama_port: int = 11434, cloud_url: str = "https://ollama.com") -> str:
    """A registry in the owner's words: the cloud is ``type: ollama`` at an https URL."""
    text = "providers:\n"
    if local:
        text += (f"  ollama:\n    type: ollama\n    base_url: http://127.0.0.1:{ollama_port}\n"
                 f"    status: active\n    models: [{LOCAL}]\n")  # fmt: skip
    text += ("  ollama-cloud:\n"
             f"    type: {'ollama' if cloud_url.startswith('https') else 'ollama_cloud'}\n"
             f"    base_url: {cloud_url}\n    status: active\n    requires_api_key: true\n"
             f"    env_var: {cloud_env_var}\n    models: [{CLOUD}]\n")  # fmt: skip
    return text


def write(tmp: Path, providers: str, mappings: str = "") -> Path:
    cfg = tmp / "cfg"
    cfg.mkdir(exist_ok=True)
    (cfg / "providers.yaml").write_text(providers)
    if mappings:
        (cfg / "model-mappings.yaml").write_text(mappings)
    return cfg


def gpumgr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process (the environment holds the key, as on the box)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("GPUMGR_")}
    full.update({"OLLAMA_API_KEY": SECRET, **(env or {})})
    return subprocess.run([sys.executable, "-m", "gpumgr.cli", *args], env=full,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def key_line(providers: str) -> int:
    return next(i for i, line in enumerate(providers.splitlines(), 1)
                if line.strip().startswith("env_var:"))  # fmt: skip


def test_validate_warns_at_the_env_var_line_with_what_happens_and_the_rename(tmp_path: Path) -> None:
    text = registry()
    r = gpumgr("validate", "--config-dir", str(write(tmp_path, text)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: ")
    (warning,) = r.stderr.splitlines()
    assert warning.startswith(
        f"providers.yaml:{key_line(text)}:5: warning: providers.ollama-cloud.env_var: "
        "LiteLLM sends $OLLAMA_API_KEY to every Ollama deployment without a key of its own")
    assert "'ollama' (http://127.0.0.1:11434)" in warning  # which process gets it
    assert "env_var: OLLAMA_CLOUD_API_KEY" in warning  # the fix
    assert "os.environ/OLLAMA_CLOUD_API_KEY" in warning
    assert SECRET not in r.stderr + r.stdout


def test_validate_strict_makes_the_cloud_key_warning_exit_2(tmp_path: Path) -> None:
    r = gpumgr("validate", "--strict", "--config-dir", str(write(tmp_path, registry())))
    assert r.returncode == 2
    assert "providers.ollama-cloud.env_var" in r.stderr


def test_validate_json_carries_the_cloud_key_warning_without_the_key(tmp_path: Path) -> None:
    r = gpumgr("validate", "--json", "--config-dir", str(write(tmp_path, registry())))
    doc = json.loads(r.stdout)
    assert doc["ok"] is True
    assert [w for w in doc["warnings"] if "providers.ollama-cloud.env_var" in w]
    assert SECRET not in r.stdout


@pytest.mark.parametrize("providers", [
    registry("OLLAMA_CLOUD_API_KEY"),  # renamed: nothing to say
    registry(local=False),  # no other Ollama for LiteLLM to send the key to
], ids=["renamed", "no-local-ollama"])
def test_no_cloud_key_warning_when_nothing_would_receive_it(tmp_path: Path, providers: str) -> None:
    r = gpumgr("validate", "--strict", "--config-dir", str(write(tmp_path, providers)))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_generated_config_keeps_the_cloud_reference_and_gives_the_local_ollama_a_placeholder_key(
    tmp_path: Path,
) -> None:
    out = tmp_path / "litellm.yaml"
    r = gpumgr("litellm-config", "--config-dir", str(write(tmp_path, registry())), "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    entries = {m["model_name"]: m["litellm_params"] for m in yaml.safe_load(text)["model_list"]}
    assert entries[CLOUD]["api_key"] == "os.environ/OLLAMA_API_KEY"  # where the owner's key is
    assert entries[LOCAL]["api_key"] == "none"
    assert f"# api_key: none on {LOCAL}: the Ollama Cloud key is in $OLLAMA_API_KEY" in text
    assert SECRET not in text + r.stdout + r.stderr


def test_generated_config_is_unchanged_when_the_cloud_key_has_its_own_name(tmp_path: Path) -> None:
    r = gpumgr("litellm-config", "--config-dir",
               str(write(tmp_path, registry("OLLAMA_CLOUD_API_KEY"))))  # fmt: skip
    assert r.returncode == 0, r.stderr
    entries = {m["model_name"]: m["litellm_params"] for m in yaml.safe_load(r.stdout)["model_list"]}
    assert "api_key" not in entries[LOCAL]
    assert entries[CLOUD]["api_key"] == "os.environ/OLLAMA_CLOUD_API_KEY"
    assert "api_key: none on" not in r.stdout


def test_merge_gives_the_owners_own_keyless_ollama_entries_a_placeholder_key(tmp_path: Path) -> None:
    """The owner's hand-written config keys the cloud with ``os.environ/OLLAMA_API_KEY``; its
    ``llama3.1:latest`` entry is not in the registry and is kept, but pinned too."""
    cfg = write(tmp_path, registry())
    merged = tmp_path / "merged.yaml"
    r = gpumgr("litellm-config", "--config-dir", str(cfg), "--merge",
               str(OWNER / "litellm-config.yaml"), "--output", str(merged))  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = merged.read_text()
    entries = {m["model_name"]: m["litellm_params"] for m in yaml.safe_load(text)["model_list"]}
    assert entries["llama3.1:latest"]["api_key"] == "none"
    assert entries[LOCAL]["api_key"] == "none"
    assert entries[LOCAL]["num_gpu_layers"] == 99  # the owner's params stay
    assert entries["qwen3-coder:480b-cloud"]["api_key"] == "os.environ/OLLAMA_API_KEY"
    assert "model_list: llama3.1:latest: api_key: none added" in r.stdout
    assert "# api_key: none on " in text
    assert SECRET not in text + r.stdout + r.stderr


def test_the_daemon_logs_the_cloud_key_warning_at_load_without_the_key(tmp_path: Path) -> None:
    harness = DaemonHarness(tmp_path, registry(ollama_port=free_port()), FAST_LIFECYCLE_YAML,
                            env={"OLLAMA_API_KEY": SECRET})  # fmt: skip
    try:
        harness.start()
        warned = [str(e.get("issue")) for e in harness.events() if e.get("event") == "config.warning"]
        assert any("providers.ollama-cloud.env_var" in w and "OLLAMA_CLOUD_API_KEY" in w
                   for w in warned), warned  # fmt: skip
        assert SECRET not in harness.log_text()
    finally:
        harness.cleanup(check_log=False)


def test_doctor_warns_at_the_line_of_the_owners_litellm_config_that_keys_the_cloud_with_it(
    tmp_path: Path,
) -> None:
    """The owner's hand-written LiteLLM config, unchanged: its cloud entry reads
    ``os.environ/OLLAMA_API_KEY`` and its local Ollama entries carry no key."""
    owner = OWNER / "litellm-config.yaml"
    line = next(i for i, ln in enumerate(owner.read_text().splitlines(), 1)
                if "os.environ/OLLAMA_API_KEY" in ln)  # fmt: skip
    cfg = write(tmp_path, registry(ollama_port=free_port(), cloud_url=f"http://127.0.0.1:{free_port()}"))
    r = gpumgr("doctor", "--json", "--config-dir", str(cfg), "--litellm-config", str(owner),
               env={"GPUMGR_RUNTIME_DIR": str(tmp_path / "run"), "GPUMGR_LISTEN": f"127.0.0.1:{free_port()}"})
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    leak = checks["litellm.cloud_key"]
    assert leak["status"] == "warn"
    assert leak["summary"].startswith(f"{owner}:{line}: os.environ/OLLAMA_API_KEY is the Ollama Cloud key")
    assert "(qwen2.5-coder:7b, llama3.1:latest)" in leak["summary"]
    assert "OLLAMA_CLOUD_API_KEY" in leak["fix"]
    assert SECRET not in r.stdout + r.stderr


def test_doctor_has_nothing_to_say_about_a_merged_config(tmp_path: Path) -> None:
    cfg = write(tmp_path, registry(ollama_port=free_port(), cloud_url=f"http://127.0.0.1:{free_port()}"))
    merged = tmp_path / "merged.yaml"
    assert gpumgr("litellm-config", "--config-dir", str(cfg), "--merge",
                  str(OWNER / "litellm-config.yaml"), "-o", str(merged)).returncode == 0
    r = gpumgr("doctor", "--json", "--config-dir", str(cfg), "--litellm-config", str(merged),
               env={"GPUMGR_RUNTIME_DIR": str(tmp_path / "run"), "GPUMGR_LISTEN": f"127.0.0.1:{free_port()}"})
    names = {c["name"] for c in json.loads(r.stdout)["checks"]}
    assert "litellm" in names and "litellm.cloud_key" not in names
