"""Provider names become file names and URL path segments: restricted at validation (the
allowed set in the message); providers are frozen values compared by value."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from gpumgr.cli import main
from gpumgr.config import load_config

OWNER = Path(__file__).resolve().parent / "data" / "owner-dialect"


def _one(tmp_path: Path, name: str) -> Path:
    (tmp_path / "providers.yaml").write_text(
        f'providers:\n  "{name}":\n    type: ollama\n    base_url: http://127.0.0.1:11434\n'
        "    models: [m]\n"
    )
    return tmp_path


@pytest.mark.parametrize("name", ["a/b", "../escape", ".hidden", "with space", "x" * 65, "ä", "a%2Fb"])
def test_a_provider_name_outside_the_allowed_set_is_refused(tmp_path: Path, name: str) -> None:
    r = CliRunner().invoke(main, ["validate", "--config-dir", str(_one(tmp_path, name))])
    assert r.exit_code == 2
    assert f"providers.yaml:2:3: providers.{name}: a provider name must be 1-64 characters: " \
           "letters, digits, '.', '_' and '-', not starting with '.'" in r.stderr


@pytest.mark.parametrize("name", ["qwen-7b", "deepseek-6.7b", "vllm-qwen", "ollama_cloud", "A1", "_x"])
def test_usual_names_are_accepted(tmp_path: Path, name: str) -> None:
    r = CliRunner().invoke(main, ["validate", "--config-dir", str(_one(tmp_path, name))])
    assert r.exit_code == 0, r.stderr


def test_providers_are_frozen_values_equal_across_two_loads() -> None:
    first, second = load_config(OWNER), load_config(OWNER)
    assert first.providers == second.providers
    p = first.provider("vllm-qwen")
    assert p.name == "vllm-qwen"
    with pytest.raises(ValidationError):
        p.max_model_len = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        p.models[0].name = "x"  # type: ignore[misc]
    assert p.model_extra and p.model_extra["api_format"] == "openai_compatible"  # extra keys kept
