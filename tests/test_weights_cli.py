"""``gpumgr pull`` as an operator runs it: a real process, the example config, the simulated hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gpumgr.cli import main
from gpumgr.sim.catalog import materialise_catalog
from gpumgr.sim.hub import HubSwitches, SimHubHandle, start_sim_hub
from tests.helpers import free_port

DEEPSEEK = "TheBloke/deepseek-coder-6.7B-instruct-AWQ"


def gpumgr(args: list[str], config: Path, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "GPUMGR_CACHE_DIR": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9",
                **env}
    full_env.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "gpumgr.cli", *args, "--config-dir", str(config)],
                          capture_output=True, text=True, env=full_env, timeout=60)


def set_sim_endpoint(config: Path, endpoint: str) -> None:
    path = config / "gpumgr.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("simulate", {})["hub_endpoint"] = endpoint
    path.write_text(yaml.safe_dump(data))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], exit_code: int, *needles: str) -> None:
    assert proc.returncode == exit_code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def gated_hub(tmp_path: Path) -> Iterator[SimHubHandle]:
    repos = materialise_catalog(tmp_path / "repos", [DEEPSEEK])
    handle = start_sim_hub(repos, switches=HubSwitches(gated={DEEPSEEK}))
    try:
        yield handle
    finally:
        handle.stop()


def test_simulated_dry_run_lists_files_and_total_without_any_hub_configured(
    example_config: Path, tmp_path: Path
) -> None:
    proc = gpumgr(["pull", "--dry-run", "qwen-7b"], example_config, tmp_path / "cache", GPUMGR_SIMULATE="1")
    assert proc.returncode == 0, proc.stderr
    assert "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ" in proc.stdout
    assert "model-00001-of-00002.safetensors" in proc.stdout and "config.json" in proc.stdout
    assert "qwen-7b: total " in proc.stdout
    assert not (tmp_path / "cache").exists()  # a dry run fetches nothing


def test_simulated_pull_json_then_second_pull_reuses_the_snapshot(example_config: Path, tmp_path: Path) -> None:
    first = gpumgr(["pull", "--simulate", "--json", "qwen-7b", "deepseek-6.7b"], example_config, tmp_path)
    assert first.returncode == 0, first.stderr
    pulls = json.loads(first.stdout)["pulls"]
    assert [p["provider"] for p in pulls] == ["qwen-7b", "deepseek-6.7b"]
    assert all(Path(p["path"], "config.json").is_file() and p["downloaded_bytes"] > 0 for p in pulls)
    assert all("/simulated-hub/" in p["path"] for p in pulls)
    assert "qwen-7b: done" in first.stderr  # plain progress lines when stderr is not a terminal

    again = gpumgr(["pull", "--simulate", "--json", "qwen-7b"], example_config, tmp_path)
    assert again.returncode == 0, again.stderr
    (snap,) = json.loads(again.stdout)["pulls"]
    assert snap["downloaded_bytes"] == 0 and snap["commit"] == pulls[0]["commit"]


def test_gated_repo_is_exit_2_with_one_line_naming_the_variable(
    example_config: Path, tmp_path: Path, gated_hub: SimHubHandle
) -> None:
    set_sim_endpoint(example_config, gated_hub.url)
    proc = gpumgr(["pull", "--simulate", "deepseek-6.7b"], example_config, tmp_path / "cache")
    assert_one_line_error(proc, 2, DEEPSEEK, "HF_TOKEN")


def test_unknown_repo_in_the_registry_is_exit_2(example_config: Path, tmp_path: Path) -> None:
    providers = example_config / "providers.yaml"
    providers.write_text(providers.read_text().replace(
        "hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "hf_repo: Qwen/No-Such-Model-AWQ"))
    proc = gpumgr(["pull", "qwen-7b"], example_config, tmp_path / "cache", GPUMGR_SIMULATE="1")
    assert_one_line_error(proc, 2, "Qwen/No-Such-Model-AWQ", "not found")


def test_unreachable_hub_is_exit_1(example_config: Path, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: connections are refused
    set_sim_endpoint(example_config, f"http://127.0.0.1:{port}")
    proc = gpumgr(["pull", "--simulate", "qwen-7b"], example_config, tmp_path / "cache")
    assert_one_line_error(proc, 1, "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "cannot download")


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["ollama"], "only vLLM"), (["nope"], "unknown provider 'nope'"), ([], "--all"),
     (["--all", "qwen-7b"], "not both")],
)
def test_non_vllm_or_unknown_names_are_input_errors(example_config: Path, args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, ["pull", *args, "--config-dir", str(example_config)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
