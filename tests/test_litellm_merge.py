"""``gpumgr litellm-config --merge``: the operator's LiteLLM config, updated from the registry
and otherwise kept (issue 17). The real proxy on a merged file: tests/test_litellm_owner_config.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gpumgr.cli import main
from gpumgr.integrations.litellm_config import CALLBACK

DATA = Path(__file__).resolve().parent / "data" / "owner-dialect"
OWNER_LITELLM = DATA / "litellm-config.yaml"


def run(*args: str) -> tuple[int, bytes, str]:
    r = CliRunner().invoke(main, ["litellm-config", "--config-dir", str(DATA), *args])
    return r.exit_code, r.stdout_bytes, r.stderr if r.stderr_bytes is not None else ""


@pytest.fixture
def merged() -> dict:  # type: ignore[type-arg]
    code, out, err = run("--merge", str(OWNER_LITELLM))
    assert code == 0, err
    return yaml.safe_load(out)  # type: ignore[no-any-return]


def test_every_setting_outside_models_and_fallbacks_is_kept(merged: dict) -> None:  # type: ignore[type-arg]
    original = yaml.safe_load(OWNER_LITELLM.read_text())
    router = dict(merged["router_settings"])
    for key in ("fallbacks", "default_fallbacks"):
        router.pop(key, None)
    assert router == {k: v for k, v in original["router_settings"].items() if k != "fallbacks"}
    settings = dict(merged["litellm_settings"])
    assert settings.pop("callbacks") == [CALLBACK]
    assert settings == original["litellm_settings"]  # cache, Redis, timeouts
    assert merged["general_settings"] == original["general_settings"]  # auth stays off


def test_per_model_params_and_timeouts_stay_and_the_registry_sets_model_and_address(
    merged: dict,  # type: ignore[type-arg]
) -> None:
    entries = {m["model_name"]: m for m in merged["model_list"]}
    ollama = entries["qwen2.5-coder:7b"]["litellm_params"]
    assert (ollama["num_gpu_layers"], ollama["stream"], ollama["timeout"]) == (99, True, 30)
    assert ollama["api_base"] == "http://localhost:11434"  # the registry's address
    vllm = entries["qwen-coder-vllm"]
    assert vllm["litellm_params"]["model"] == "hosted_vllm/Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
    assert (vllm["litellm_params"]["timeout"], vllm["litellm_params"]["stream_timeout"]) == (60, 30)
    assert vllm["model_info"] == {"description": "Qwen2.5-Coder 7B AWQ", "gpumgr_backend": "vllm-qwen"}
    assert "code_generation" in entries  # a capability name the registry does not know: kept
    assert "deepseek-coder-6.7b-vllm" in entries  # added from the registry


def test_fallbacks_follow_the_registry_and_capability_name_chains_stay(merged: dict) -> None:  # type: ignore[type-arg]
    chains = {next(iter(c)): next(iter(c.values())) for c in merged["router_settings"]["fallbacks"]}
    assert chains["qwen-coder-vllm"] == ["qwen2.5-coder:7b", "qwen3-coder:480b-cloud"]
    assert chains["qwen-coder-14b-vllm"] == ["qwen-coder-vllm", "qwen3-coder:480b-cloud"]
    assert chains["code_generation"] == ["qwen2.5-coder:7b", "qwen3-coder:480b-cloud"]


def test_the_summary_goes_to_stderr_when_the_config_goes_to_stdout() -> None:
    code, out, err = run("--merge", str(OWNER_LITELLM))
    assert code == 0
    assert "litellm_settings.callbacks: added " + CALLBACK in err
    assert "model_list: qwen-coder-vllm: updated model, model_info.gpumgr_backend" in err
    assert "no general_settings.master_key" in err and "comments" in err
    assert b"litellm_settings.callbacks: added" not in out


def test_same_inputs_same_bytes_and_merging_twice_changes_nothing_more(tmp_path: Path) -> None:
    first = run("--merge", str(OWNER_LITELLM))[1]
    assert run("--merge", str(OWNER_LITELLM))[1] == first
    again = tmp_path / "merged.yaml"
    again.write_bytes(first)
    code, out, err = run("--merge", str(again))
    assert code == 0 and out == first
    assert "added" not in err and "updated" not in err


def test_output_is_written_atomically_with_the_summary_on_stdout(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    target.write_bytes(OWNER_LITELLM.read_bytes())
    r = CliRunner().invoke(main, ["litellm-config", "--config-dir", str(DATA), "--merge",
                                  str(target), "--output", str(target)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "litellm_settings.callbacks: added" in r.stdout
    assert yaml.safe_load(target.read_text())["litellm_settings"]["callbacks"] == [CALLBACK]
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary left


@pytest.mark.parametrize(("content", "message"), [
    ("model_list: [\n", "not YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
])  # fmt: skip
def test_a_file_that_is_not_a_litellm_config_is_exit_2_in_one_line(
    tmp_path: Path, content: str, message: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    code, out, err = run("--merge", str(bad))
    assert code == 2 and out == b""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_missing_file_is_exit_2(tmp_path: Path) -> None:
    code, _, err = run("--merge", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read it" in err
