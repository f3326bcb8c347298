"""gpumgr.weights over the real huggingface_hub client against the simulated hub (real HTTP)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpumgr.config.registry import Provider
from gpumgr.config.settings import HubSettings
from gpumgr.errors import WeightsError, WeightsInputError
from gpumgr.modelfiles import header_only_safetensors, read_model_dims, weights_bytes
from gpumgr.sim.catalog import load_catalog, materialise_catalog, write_repo
from gpumgr.sim.hub import HubSwitches, SimHubHandle, start_sim_hub
from gpumgr.weights import (
    DownloadProgress,
    HubAccess,
    WeightsSpec,
    hub_access,
    local_snapshot,
    plan_pull,
    resolve_snapshot,
)
from tests.helpers import free_port, wait_for

QWEN7 = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
DEEPSEEK = "TheBloke/deepseek-coder-6.7B-instruct-AWQ"
BIG = "gpumgr-test/big-AWQ"
FP16 = "gpumgr-test/fp16-only"
MiB = 1024 * 1024
BIG_DATA_BYTES = 24 * MiB  # over huggingface_hub's 10 MiB write chunk, so resumes are visible
AWQ_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
    "num_hidden_layers": 2, "num_key_value_heads": 2, "max_position_embeddings": 2048,
    "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128},
}


def _big_safetensors() -> bytes:
    """A real (not header-only) safetensors file of 24 MiB, so a download takes measurable time."""
    data = hashlib.shake_256(b"gpumgr").digest(BIG_DATA_BYTES)
    return header_only_safetensors(BIG_DATA_BYTES) + data


@pytest.fixture(scope="module")
def repos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub-repos")
    materialise_catalog(root, [QWEN7, DEEPSEEK])
    write_repo(root, BIG, {
        "config.json": json.dumps(AWQ_CONFIG).encode(),
        "tokenizer_config.json": b"{}",
        "model.safetensors": _big_safetensors(),
        "README.md": b"# not fetched\n",
    })
    fp16 = {k: v for k, v in AWQ_CONFIG.items() if k != "quantization_config"}
    write_repo(root, FP16, {"config.json": json.dumps(fp16).encode(),
                            "model.safetensors": header_only_safetensors(1024)})
    return root


@pytest.fixture
def hub(repos_dir: Path) -> Iterator[SimHubHandle]:
    handle = start_sim_hub(repos_dir, switches=HubSwitches())
    try:
        yield handle
    finally:
        handle.stop()


def spec(repo: str, revision: str = "main", quantization: str | None = "AWQ") -> WeightsSpec:
    return WeightsSpec(provider="test", repo=repo, revision=revision, quantization=quantization)


def incomplete_files(cache: Path) -> list[Path]:
    return list(cache.rglob("*.incomplete"))


def test_full_pull_of_a_catalog_model_gives_vllm_a_complete_snapshot(hub: SimHubHandle, tmp_path: Path) -> None:
    provider = Provider(type="vllm", name="qwen-7b", base_url="http://127.0.0.1:8001",
                        models=[{"name": "qwen-coder-vllm", "hf_repo": QWEN7, "quantization": "AWQ"}])
    events: list[DownloadProgress] = []
    snap = resolve_snapshot(provider, HubAccess(hub.url), tmp_path, progress=events.append)

    catalog = load_catalog()[QWEN7]
    assert snap.repo == QWEN7 and snap.revision == "main" and len(snap.commit) == 40
    assert "README.md" not in snap.files and ".gitattributes" not in snap.files
    assert {"config.json", "tokenizer.json", "model-00001-of-00002.safetensors"} <= set(snap.files)
    assert weights_bytes(snap.path) == catalog.weights_bytes  # 5.2 GiB declared by the headers
    assert read_model_dims(snap.path).kv_bytes_per_token() == 56 * 1024
    assert events[-1].phase == "done" and events[-1].done_bytes == events[-1].total_bytes == snap.total_bytes
    assert not incomplete_files(tmp_path)


def test_second_pull_of_a_complete_snapshot_makes_no_http_request(hub: SimHubHandle, tmp_path: Path) -> None:
    first = resolve_snapshot(spec(QWEN7), HubAccess(hub.url), tmp_path)
    served = len(hub.hub.requests)
    second = resolve_snapshot(spec(QWEN7), HubAccess(hub.url), tmp_path)
    assert len(hub.hub.requests) == served
    assert second.path == first.path and second.commit == first.commit and second.downloaded_bytes == 0


def test_offline_uses_the_complete_snapshot_and_names_the_repo_when_missing(hub: SimHubHandle, tmp_path: Path) -> None:
    done = resolve_snapshot(spec(QWEN7), HubAccess(hub.url), tmp_path)
    hub.stop()
    dead = HubAccess(hub.url)
    assert resolve_snapshot(spec(QWEN7), dead, tmp_path, offline=True).path == done.path
    with pytest.raises(WeightsError) as err:
        resolve_snapshot(spec(DEEPSEEK), dead, tmp_path, offline=True)
    assert DEEPSEEK in str(err.value) and err.value.exit_code == 1


def test_connection_cut_mid_file_resumes_with_range_and_identical_bytes(
    hub: SimHubHandle, repos_dir: Path, tmp_path: Path
) -> None:
    hub.switches.drop_after_bytes = 15 * MiB
    snap = resolve_snapshot(spec(BIG), HubAccess(hub.url), tmp_path)
    gets = hub.hub.file_gets(BIG, "model.safetensors")
    assert len(gets) == 2 and gets[0].range is None and gets[1].range is not None
    resumed_at = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 15 * MiB  # what had reached the disk, not a restart
    assert (snap.path / "model.safetensors").read_bytes() == (repos_dir / BIG / "model.safetensors").read_bytes()
    assert not incomplete_files(tmp_path)


def _pull_in_subprocess(endpoint: str, cache: Path, repo: str) -> subprocess.Popen[str]:
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from gpumgr.weights import HubAccess, WeightsSpec, resolve_snapshot\n"
        "s = resolve_snapshot(WeightsSpec('t', sys.argv[3], 'main', 'AWQ'), HubAccess(sys.argv[1]), Path(sys.argv[2]))\n"
        "print(json.dumps({'path': str(s.path), 'downloaded': s.downloaded_bytes}))\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, endpoint, str(cache), repo],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_download_leaves_no_incomplete_file_after_the_next_pull(
    hub: SimHubHandle, repos_dir: Path, tmp_path: Path
) -> None:
    hub.switches.slow_bytes_per_s = 8 * MiB
    proc = _pull_in_subprocess(hub.url, tmp_path, BIG)
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in incomplete_files(tmp_path)),
                 what="bytes of the killed download on disk")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert incomplete_files(tmp_path), "the kill must land mid-download"
    assert local_snapshot(spec(BIG), tmp_path) is None

    hub.switches.slow_bytes_per_s = None
    snap = resolve_snapshot(spec(BIG), HubAccess(hub.url), tmp_path)
    assert not incomplete_files(tmp_path)
    assert (snap.path / "model.safetensors").read_bytes() == (repos_dir / BIG / "model.safetensors").read_bytes()


def test_two_concurrent_pulls_of_one_repo_download_once_and_both_succeed(
    hub: SimHubHandle, tmp_path: Path
) -> None:
    hub.switches.slow_bytes_per_s = 12 * MiB  # ~2 s: both processes are up before it ends
    procs = [_pull_in_subprocess(hub.url, tmp_path, BIG) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["downloaded"] > 0 for r in results) == [False, True]
    assert len(hub.hub.file_gets(BIG, "model.safetensors")) == 1


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text and "Traceback" not in text
    return text


def test_missing_repository_is_an_input_error_naming_it(hub: SimHubHandle, tmp_path: Path) -> None:
    with pytest.raises(WeightsInputError) as err:
        resolve_snapshot(spec("Qwen/no-such-model"), HubAccess(hub.url), tmp_path)
    assert err.value.exit_code == 2
    assert "Qwen/no-such-model" in _one_line(err.value) and "not found" in str(err.value)


def test_missing_revision_is_an_input_error_naming_repo_and_revision(hub: SimHubHandle, tmp_path: Path) -> None:
    with pytest.raises(WeightsInputError) as err:
        resolve_snapshot(spec(QWEN7, revision="v9.9"), HubAccess(hub.url), tmp_path)
    assert err.value.exit_code == 2
    assert QWEN7 in _one_line(err.value) and "'v9.9'" in str(err.value)


def test_gated_repo_without_token_says_which_variable_to_set(hub: SimHubHandle, tmp_path: Path) -> None:
    hub.switches.gated.add(DEEPSEEK)
    with pytest.raises(WeightsInputError) as err:
        resolve_snapshot(spec(DEEPSEEK), HubAccess(hub.url), tmp_path)
    assert err.value.exit_code == 2
    assert DEEPSEEK in _one_line(err.value) and "HF_TOKEN" in str(err.value)
    assert not hub.hub.file_gets(DEEPSEEK, "model.safetensors")


def test_gated_repo_downloads_with_a_granted_token_and_never_shows_it(hub: SimHubHandle, tmp_path: Path) -> None:
    hub.switches.gated.add(DEEPSEEK)
    hub.switches.tokens.add("hf_granted")
    bad = hub_access(HubSettings(), {"HF_TOKEN": "hf_wrong_secret"}, endpoint=hub.url)
    with pytest.raises(WeightsInputError) as err:
        resolve_snapshot(spec(DEEPSEEK), bad, tmp_path)
    assert "hf_wrong_secret" not in str(err.value) and "HF_TOKEN" in str(err.value)
    assert "hf_wrong_secret" not in repr(bad)

    token_file = tmp_path / "token"
    token_file.write_text("hf_granted\n")
    good = hub_access(HubSettings(token_file=str(token_file)), {}, endpoint=hub.url)
    snap = resolve_snapshot(spec(DEEPSEEK), good, tmp_path / "cache")
    assert weights_bytes(snap.path) == load_catalog()[DEEPSEEK].weights_bytes


def test_disk_too_small_fails_before_any_weights_byte_moves(hub: SimHubHandle, tmp_path: Path) -> None:
    with pytest.raises(WeightsInputError) as err:
        resolve_snapshot(spec(BIG), HubAccess(hub.url), tmp_path, free_bytes=lambda _p: 30 * MiB,
                         margin_bytes=8 * MiB)
    assert err.value.exit_code == 2 and BIG in _one_line(err.value) and "free" in str(err.value)
    assert not hub.hub.file_gets(BIG, "model.safetensors")


def test_repository_without_awq_config_is_refused_when_provider_asks_for_awq(hub: SimHubHandle, tmp_path: Path) -> None:
    with pytest.raises(WeightsInputError) as err:
        resolve_snapshot(spec(FP16), HubAccess(hub.url), tmp_path)
    assert err.value.exit_code == 2
    assert FP16 in _one_line(err.value) and "AWQ" in str(err.value)
    assert not hub.hub.file_gets(FP16, "model.safetensors")
    # the same repository is fine for a provider that does not ask for AWQ
    assert resolve_snapshot(spec(FP16, quantization=None), HubAccess(hub.url), tmp_path).files


def test_unreachable_hub_is_a_runtime_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: connections are refused
    with pytest.raises(WeightsError) as err:
        resolve_snapshot(spec(QWEN7), HubAccess(f"http://127.0.0.1:{port}", timeout_s=2), tmp_path)
    assert not isinstance(err.value, WeightsInputError) and err.value.exit_code == 1
    assert QWEN7 in _one_line(err.value)


def test_dry_run_lists_files_and_total_and_writes_nothing(hub: SimHubHandle, tmp_path: Path) -> None:
    plan = plan_pull(spec(QWEN7), HubAccess(hub.url), tmp_path / "cache")
    paths = [f.path for f in plan.files]
    assert "config.json" in paths and "model-00002-of-00002.safetensors" in paths and "README.md" not in paths
    assert plan.total_bytes == plan.needed_bytes == sum(f.size_bytes for f in plan.files) > 0
    assert plan.quant_method == "awq"
    assert not (tmp_path / "cache").exists()
