"""A provider's ``env:`` holds no secret: secret-shaped names and known secret values are
refused with one located line (exit 2); common names that only look alike are accepted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpumgr.config.env_secrets import secret_looking_name

SECRET_NAMES = [
    "MYTOKEN", "PASSWORD1", "DB_PASSWD", "X_AUTH", "API_KEY", "OPENAI_API_KEY", "OPENAIAPIKEY",
    "GITHUB_TOKEN", "GITHUB_TOKEN2", "AUTHTOKEN", "BEARER", "X_BEARER", "DB_PWD", "MYSQL_PWD",
    "DBPWD", "CLIENT_SECRET", "CLIENTSECRET", "MY_SECRET_VALUE", "SECRETS", "DB_PASS",
    "DBPASSWORD_FILE", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY", "ACCESSKEY", "MYKEY",
    "SECRETKEY", "PRIVATE_KEY", "SSH_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "CREDENTIAL",
    "DB_CREDS", "BASIC_AUTH", "BASICAUTH", "passphrase", "gpg_passphrase1", "hf_token",
    "S3_KEY", "KEY", "TOKEN", "PASSWORD",
]
ORDINARY_NAMES = [
    "KEYBOARD", "MONKEY", "AUTHOR", "AUTHORITY", "SECRETARY", "HOTKEY", "TURNKEY",
    "GPUMGR_SIM_TOKEN_DELAY_S", "TOKENIZERS_PARALLELISM", "MAX_NUM_BATCHED_TOKENS",
    "VLLM_ATTENTION_BACKEND", "SSL_KEY_FILE", "KEY_FILE", "AUTH_MODE", "PWD", "OLDPWD",
    "CUDA_DEVICE_ORDER", "OMP_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF", "VLLM_USE_V1",
    "NCCL_P2P_DISABLE", "HF_HUB_ENABLE_HF_TRANSFER", "TOKEN_BUDGET", "PASSES", "COMPASS",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_shaped_names_are_caught(name: str) -> None:
    assert secret_looking_name(name)


@pytest.mark.parametrize("name", ORDINARY_NAMES)
def test_names_that_only_look_alike_pass(name: str) -> None:
    assert not secret_looking_name(name)


PROVIDERS = """\
providers:
  cloud:
    type: ollama_cloud
    base_url: https://ollama.com
    requires_api_key: true
    env_var: TEST_CLOUD_KEY
    models: [x]
  qwen-7b:
    type: vllm
    base_url: http://127.0.0.1:8001
    status: active
    max_model_len: 8192
    env:
{env}
    models:
      - name: qwen-coder-vllm
        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
"""
CLOUD_KEY = "oc-4c1d9e7f2a6b8305d1e9"
CONTROL = "control-token-0123456789abcdef"


def _validate(tmp_path: Path, env_lines: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    cdir = tmp_path / "c"
    cdir.mkdir(exist_ok=True)
    (cdir / "providers.yaml").write_text(PROVIDERS.format(env=env_lines))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMGR_")}
    env.update(extra_env)
    return subprocess.run([sys.executable, "-m", "gpumgr.cli", "validate", "--config-dir",
                           str(cdir)], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["MYTOKEN", "PASSWORD1", "DB_PASSWD", "X_AUTH"])
def test_a_secret_shaped_env_name_is_one_located_line(tmp_path: Path, name: str) -> None:
    r = _validate(tmp_path, f"      {name}: hello")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert lines == [f"providers.yaml:13:5: providers.qwen-7b.env: {name} looks like a secret: "
                     "secrets never live in providers.yaml (name the variable in env_var, or use a "
                     "systemd credential)"]


@pytest.mark.parametrize(("value", "what"), [
    (CLOUD_KEY, "the value of TEST_CLOUD_KEY (env_var of cloud)"),
    (CONTROL, "the control token"),
])
def test_an_env_value_equal_to_a_known_secret_is_refused_whatever_its_name(
    tmp_path: Path, value: str, what: str,
) -> None:
    r = _validate(tmp_path, f"      VLLM_EXTRA_SETTING: '{value}'\n      OTHER: fine",
                  TEST_CLOUD_KEY=CLOUD_KEY, GPUMGR_CONTROL_TOKEN=CONTROL)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert out.strip().splitlines() == [
        f"providers.yaml:14:7: providers.qwen-7b.env.VLLM_EXTRA_SETTING: env VLLM_EXTRA_SETTING "
        f"holds a secret ({what}): secrets never live in providers.yaml (name the variable in "
        "env_var, or use a systemd credential)"]
    assert value not in out


def test_ordinary_names_and_values_pass(tmp_path: Path) -> None:
    r = _validate(tmp_path, "      KEYBOARD: us\n      AUTHOR: me\n      TOKENIZERS_PARALLELISM: 'false'",
                  TEST_CLOUD_KEY=CLOUD_KEY, GPUMGR_CONTROL_TOKEN=CONTROL)
    assert r.returncode == 0, r.stdout + r.stderr
