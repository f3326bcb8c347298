"""Warnings beside errors: a misspelt gpumgr key is reported with "did you mean", exit 0;
``validate --strict`` makes warnings fatal; ``--json`` carries errors and warnings."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from gpumgr.cli import main
from gpumgr.config import load_config
from gpumgr.config.typos import close_key, edit_distance


def _typo(example_config: Path) -> Path:
    path = example_config / "providers.yaml"
    text = path.read_text()
    old = "    max_model_len: 4096\n"  # deepseek-6.7b
    assert old in text
    path.write_text(text.replace(old, "    max_model_lenn: 8192\n", 1))
    return example_config


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_a_misspelt_vllm_key_is_a_warning_with_did_you_mean_and_exit_0(example_config: Path) -> None:
    cfg = _typo(example_config)
    r = CliRunner().invoke(main, ["validate", "--config-dir", str(cfg)])
    assert r.exit_code == 0, r.output
    line = _line_of(cfg / "providers.yaml", "max_model_lenn")
    assert (
        f"providers.yaml:{line}:5: warning: providers.deepseek-6.7b.max_model_lenn: unknown key, "
        "kept as description; did you mean 'max_model_len'?"
    ) in r.stderr
    assert r.stdout.startswith("ok: ")


def test_strict_turns_warnings_into_exit_2(example_config: Path) -> None:
    r = CliRunner().invoke(main, ["validate", "--strict", "--config-dir", str(_typo(example_config))])
    assert r.exit_code == 2
    assert "did you mean 'max_model_len'?" in r.stderr


def test_json_carries_errors_and_warnings(example_config: Path) -> None:
    cfg = _typo(example_config)
    r = CliRunner().invoke(main, ["validate", "--json", "--config-dir", str(cfg)])
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["ok"] is True and doc["errors"] == []
    assert len(doc["warnings"]) == 1 and "max_model_lenn" in doc["warnings"][0]
    (cfg / "gpumgr.yaml").write_text("listn: x\n")
    r = CliRunner().invoke(main, ["validate", "--json", "--config-dir", str(cfg)])
    doc = json.loads(r.stdout)
    assert r.exit_code == 2 and doc["ok"] is False
    assert doc["errors"][0].startswith("gpumgr.yaml:1:1: listn: unknown key")
    assert len(doc["warnings"]) == 1
    r = CliRunner().invoke(main, ["validate", "--json", "--strict", "--config-dir", str(cfg)])
    assert json.loads(r.stdout)["ok"] is False


def test_a_load_keeps_the_warnings_and_the_plan_input_is_untouched(example_config: Path) -> None:
    cfg = load_config(_typo(example_config))
    assert [w.path for w in cfg.warnings] == ["providers.deepseek-6.7b.max_model_lenn"]
    assert cfg.provider("deepseek-6.7b").max_model_len is None


def test_descriptive_keys_are_never_mistaken_for_gpumgr_keys() -> None:
    known = ["name", "hf_repo", "revision", "quantization", "model_size_gb", "context_length",
             "aliases", "served_model_name", "type", "status", "base_url", "models", "gpu",
             "location", "env_var", "extra_args", "max_num_seqs", "max_model_len"]  # fmt: skip
    for key in ["size", "docs", "features", "description", "specialty", "api_format", "metadata",
                "kv_cache_available_gb", "hardware_requirements", "notes", "tags", "url"]:  # fmt: skip
        assert close_key(key, known) is None, key
    assert close_key("modles", known) == "models"
    assert close_key("max-model-len", known) == "max_model_len"
    assert close_key("hf_rep", known) == "hf_repo"
    assert edit_distance("max_model_lenn", "max_model_len") == 1
    assert edit_distance("ab", "ba") == 1


def test_example_config_has_no_warnings(example_config: Path) -> None:
    r = CliRunner().invoke(main, ["validate", "--strict", "--config-dir", str(example_config)])
    assert r.exit_code == 0 and r.stderr == ""
