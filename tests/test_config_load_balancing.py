"""``load_balancing:`` in model-mappings.yaml: what gpumgr's LiteLLM config does is checked,
with warnings only (config/load_balancing.py); the owner's own section passes silently.

Each test writes a real registry to a tmp dir and runs the real ``gpumgr validate``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gpumgr.cli import main

PROVIDERS = """providers:
  ollama:
    type: ollama
    base_url: http://127.0.0.1:11434
    models: [qwen2.5-coder:7b]
"""
HEAD = "exact_matches:\n  qwen2.5-coder:7b: {provider: ollama}\n"


def validate(tmp: Path, load_balancing: str, *flags: str) -> tuple[int, str, str]:
    (tmp / "providers.yaml").write_text(PROVIDERS)
    (tmp / "model-mappings.yaml").write_text(HEAD + load_balancing)
    r = CliRunner().invoke(main, ["validate", *flags, "--config-dir", str(tmp)])
    return r.exit_code, r.stdout, r.stderr


def test_the_owners_load_balancing_section_validates_without_a_word(tmp_path: Path) -> None:
    code, out, err = validate(tmp_path, "load_balancing:\n  strategy: priority\n  health_aware: true\n",
                              "--strict")  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith("ok: ")


def test_an_unknown_load_balancing_key_warns_at_its_line_with_the_keys_gpumgr_reads(
    tmp_path: Path,
) -> None:
    code, _, err = validate(tmp_path, "load_balancing:\n  strategy: priority\n  sticky_sessions: true\n")
    assert code == 0
    assert err.splitlines() == [
        "model-mappings.yaml:5:3: warning: load_balancing.sticky_sessions: unknown key, kept for "
        "the router; gpumgr reads only 'strategy', 'health_aware' here"]


def test_a_misspelt_load_balancing_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    _, _, err = validate(tmp_path, "load_balancing:\n  health_awre: true\n")
    assert "load_balancing.health_awre: unknown key, kept for the router; did you mean " \
           "'health_aware'?" in err


def test_a_strategy_gpumgrs_litellm_config_does_not_do_warns_with_what_it_does(tmp_path: Path) -> None:
    code, _, err = validate(tmp_path, "load_balancing:\n  strategy: round_robin\n")
    assert code == 0
    (line,) = err.splitlines()
    assert line.startswith("model-mappings.yaml:4:3: warning: load_balancing.strategy: "
                           "'round_robin' is kept for the router, but gpumgr's LiteLLM config "
                           "routes by priority")  # fmt: skip
    assert "(accepted: 'priority')" in line


@pytest.mark.parametrize(("value", "says"), [
    ("false", "false is not what the router gets: the gpumgr callback"),
    ("sometimes", "must be true or false (got 'sometimes')"),
])
def test_health_aware_other_than_true_warns(tmp_path: Path, value: str, says: str) -> None:
    code, _, err = validate(tmp_path, f"load_balancing:\n  health_aware: {value}\n")
    assert code == 0
    assert f"model-mappings.yaml:4:3: warning: load_balancing.health_aware: {says}" in err


def test_load_balancing_that_is_not_a_mapping_is_a_warning_not_an_error(tmp_path: Path) -> None:
    code, out, err = validate(tmp_path, "load_balancing: priority\n")
    assert code == 0 and out.startswith("ok: ")
    assert "model-mappings.yaml:3:1: warning: load_balancing: kept for the router, but gpumgr " \
           "reads a mapping here (keys 'strategy', 'health_aware'); got str" in err


def test_strict_makes_a_load_balancing_warning_exit_2(tmp_path: Path) -> None:
    code, _, err = validate(tmp_path, "load_balancing:\n  strategy: least_busy\n", "--strict")
    assert code == 2
    assert "load_balancing.strategy" in err
