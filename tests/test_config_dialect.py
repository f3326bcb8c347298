"""The registry as its owner writes it validates unchanged (issue 10: the owner's dialect).

``tests/data/owner-dialect`` holds a registry in that style, at least as large as the example:
router names as ``exact_matches`` keys, ``priority`` words, ``fallback`` naming a provider,
``backend_model``, models listed by repository id, capabilities and chains naming router names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpumgr.cli import main
from gpumgr.config import load_config
from tests.helpers import free_port

OWNER = Path(__file__).resolve().parent / "data" / "owner-dialect"
EXAMPLE = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture
def owner(tmp_path: Path) -> Path:
    dest = tmp_path / "owner"
    shutil.copytree(OWNER, dest)
    return dest


def _validate(cfg: Path, *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["validate", "--config-dir", str(cfg), *args])
    stderr = r.stderr if r.stderr_bytes is not None else ""
    return r.exit_code, r.stdout, stderr


def test_the_owners_registry_validates_with_exit_0_and_no_warnings(owner: Path) -> None:
    code, out, err = _validate(owner)
    assert code == 0, err
    assert err == ""
    assert out.startswith("ok: 9 providers (4 vllm)")


def test_the_owner_style_registry_is_at_least_as_large_as_the_example(owner: Path) -> None:
    mine, example = load_config(owner), load_config(EXAMPLE)
    assert len(mine.providers) >= len(example.providers)
    assert len(mine.mappings.exact_matches) >= len(example.mappings.exact_matches)
    assert len(mine.mappings.fallback_chains) >= len(example.mappings.fallback_chains)
    assert len(mine.mappings.capabilities) >= len(example.mappings.capabilities)


def test_priority_words_are_kept_and_integers_stay_integers(owner: Path) -> None:
    em = load_config(owner).mappings.exact_matches
    assert em["qwen-coder-vllm"].priority == "primary"
    assert em["llama3.1:8b"].priority == "tertiary"
    assert em["general-chat"].priority == 3
    assert em["qwen-coder-vllm"].backend_model == "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
    assert em["qwen-coder-vllm"].fallback == "ollama"  # a provider: whatever it serves


def test_a_reference_that_names_nothing_is_a_warning_with_file_line_col_and_a_guess(owner: Path) -> None:
    path = owner / "model-mappings.yaml"
    path.write_text(path.read_text().replace("fallback: ollama\n", "fallback: olama\n", 1))
    code, _, err = _validate(owner)
    assert code == 0
    assert err.splitlines() == [
        "model-mappings.yaml:6:5: warning: exact_matches.qwen-coder-vllm.fallback: "
        "unknown model or provider 'olama' (did you mean 'ollama'?)"
    ]
    assert _validate(owner, "--strict")[0] == 2


def test_a_chain_entry_that_names_nothing_is_a_warning(owner: Path) -> None:
    path = owner / "model-mappings.yaml"
    path.write_text(path.read_text().replace("chain: [gpt-oss:120b-cloud]", "chain: [gpt-5]"))
    code, _, err = _validate(owner)
    assert code == 0
    assert "warning: fallback_chains.general-chat.chain[0]: unknown model 'gpt-5'" in err


def test_a_backend_model_the_provider_does_not_list_is_a_warning(owner: Path) -> None:
    path = owner / "model-mappings.yaml"
    path.write_text(path.read_text().replace('backend_model: "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"',
                                             'backend_model: "Qwen/Qwen2.5-Coder-7B"'))  # fmt: skip
    code, _, err = _validate(owner)
    assert code == 0
    assert "warning: exact_matches.qwen-coder-vllm.backend_model: provider 'vllm-qwen' does not list" in err


def test_served_model_name_is_the_model_name_unless_the_provider_says_otherwise(owner: Path) -> None:
    cfg = load_config(owner)
    assert cfg.provider("vllm-qwen").served_model_name == "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
    path = owner / "providers.yaml"
    path.write_text(path.read_text().replace(
        "      - name: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ\n",
        "      - name: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ\n        served_model_name: qwen-coder\n", 1))  # fmt: skip
    p = load_config(owner).provider("vllm-qwen")
    assert p.served_model_name == "qwen-coder"
    assert p.served_names == ["qwen-coder"]
    assert "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ" in p.model_names  # still a name references may use


def test_plan_json_shows_the_served_model_name_the_router_sends(owner: Path, tmp_path: Path) -> None:
    path = owner / "providers.yaml"
    path.write_text(path.read_text().replace(":11434", f":{free_port()}"))
    env = {"GPUMGR_CONFIG_DIR": str(owner), "GPUMGR_SIM_GPU_STATE": str(tmp_path / "gpu.json"),
           "GPUMGR_SIMULATE": "1"}  # fmt: skip
    for d in ("RUNTIME", "STATE", "LOG", "CACHE"):
        env[f"GPUMGR_{d}_DIR"] = str(tmp_path / d.lower())
    r = CliRunner().invoke(main, ["plan", "--json"], env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (inst,) = json.loads(r.stdout)["gpus"][0]["instances"]
    assert inst["provider"] == "vllm-qwen"
    assert inst["served_model_name"] == "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
    argv = inst["argv"]
    assert argv[argv.index("--served-model-name") + 1] == "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
