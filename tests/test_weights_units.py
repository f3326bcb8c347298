"""The pure parts of gpumgr.weights: patterns, AWQ and disk checks, token precedence, progress,
verification and the manifest that makes a snapshot "complete" — no network involved."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from gpumgr.config.settings import HubSettings
from gpumgr.errors import WeightsInputError
from gpumgr.modelfiles import model_dims
from gpumgr.sim.catalog import load_catalog
from gpumgr.weights import WeightsSpec, hub_cache_dir, local_snapshot
from gpumgr.weights.cache import Manifest, ManifestFile, snapshot_dir, write_manifest
from gpumgr.weights.credentials import resolve_endpoint, resolve_token
from gpumgr.weights.preflight import allow_patterns, check_disk, check_quantization, select_files
from gpumgr.weights.progress import DownloadProgress, ProgressMeter, tqdm_adapter
from gpumgr.weights.verify import verify_snapshot

GiB = 1024**3


def spec(quantization: str | None = "AWQ", trust_remote_code: bool = False) -> WeightsSpec:
    return WeightsSpec("p", "org/model", "main", quantization, trust_remote_code)


def test_python_files_are_fetched_only_for_trust_remote_code() -> None:
    files = [ManifestFile(p, 1, None) for p in
             ("config.json", "modeling_x.py", "model.safetensors", "README.md", "tokenizer.model",
              "merges.txt", "chat_template.jinja", "pytorch_model.bin", "original/consolidated.pth")]
    plain = [f.path for f in select_files(files, allow_patterns(False))]
    assert plain == ["chat_template.jinja", "config.json", "merges.txt", "model.safetensors", "tokenizer.model"]
    assert "modeling_x.py" in [f.path for f in select_files(files, allow_patterns(True))]


def test_awq_request_against_an_fp16_or_gptq_config_is_refused() -> None:
    assert check_quantization(spec(), {"quantization_config": {"quant_method": "awq"}}) == "awq"
    with pytest.raises(WeightsInputError, match="no quantization_config"):
        check_quantization(spec(), {"torch_dtype": "bfloat16"})
    with pytest.raises(WeightsInputError, match="'gptq'"):
        check_quantization(spec("awq_marlin"), {"quantization_config": {"quant_method": "gptq"}})
    assert check_quantization(spec(None), {"torch_dtype": "float16"}) is None


def test_disk_check_counts_the_margin() -> None:
    check_disk(spec(), needed_bytes=5 * GiB, free_bytes=7 * GiB, margin_bytes=1 * GiB, where=Path("/c"))
    with pytest.raises(WeightsInputError, match="org/model: needs 5.0 GiB"):
        check_disk(spec(), needed_bytes=5 * GiB, free_bytes=int(5.5 * GiB), margin_bytes=1 * GiB, where=Path("/c"))
    check_disk(spec(), needed_bytes=0, free_bytes=0, margin_bytes=1 * GiB, where=Path("/c"))


def test_token_precedence_env_then_token_path_then_settings_file(tmp_path: Path) -> None:
    f1, f2 = tmp_path / "a", tmp_path / "b"
    f1.write_text("tok-path\n")
    f2.write_text("tok-file\n")
    hub = HubSettings(token_file=str(f2))
    assert resolve_token(hub, {"HF_TOKEN": "tok-env", "HF_TOKEN_PATH": str(f1)}).value == "tok-env"  # type: ignore[union-attr]
    assert resolve_token(hub, {"HF_TOKEN_PATH": str(f1)}).value == "tok-path"  # type: ignore[union-attr]
    token = resolve_token(hub, {})
    assert token is not None and token.value == "tok-file" and "hub.token_file" in token.source
    assert "tok-file" not in repr(token) and "tok-file" not in str(token)
    assert resolve_token(HubSettings(), {}) is None


def test_token_file_that_is_missing_is_an_input_error_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(WeightsInputError, match="HF_TOKEN_PATH names .*/nope, which does not exist"):
        resolve_token(HubSettings(), {"HF_TOKEN_PATH": str(tmp_path / "nope")})


def test_endpoint_precedence_flag_settings_env_default() -> None:
    hub = HubSettings(endpoint="http://mirror:8080/")
    assert resolve_endpoint(hub, {"HF_ENDPOINT": "http://env"}, "http://flag") == "http://flag"
    assert resolve_endpoint(hub, {"HF_ENDPOINT": "http://env"}) == "http://mirror:8080"
    assert resolve_endpoint(HubSettings(), {"HF_ENDPOINT": "http://env"}) == "http://env"
    assert resolve_endpoint(HubSettings(), {}) == "https://huggingface.co"


def test_progress_meter_rate_limits_callbacks_and_reports_rate() -> None:
    now = [100.0]
    seen: list[DownloadProgress] = []
    meter = ProgressMeter("r", 1000, seen.append, interval_s=1.0, clock=lambda: now[0])
    now[0] = 101.0
    meter.add(100)
    meter.add(100)  # same instant: swallowed
    now[0] = 102.0
    meter.add(300)
    assert [e.done_bytes for e in seen] == [100, 500]
    assert seen[-1].rate_bytes_per_s == pytest.approx(250.0)
    assert seen[-1].percent == pytest.approx(50.0) and seen[-1].eta_s == pytest.approx(2.0)
    assert seen[-1].detail() == "downloading 50% of 1000 B"
    meter.phase("done")
    assert seen[-1].phase == "done" and seen[-1].done_bytes == 1000


def test_tqdm_adapter_counts_only_the_bytes_written_bar() -> None:
    seen: list[DownloadProgress] = []
    meter = ProgressMeter("r", 50, seen.append, interval_s=0.0)
    cls: Any = tqdm_adapter(meter)
    files = cls(total=3, desc="Fetching 3 files")
    transfer = cls(desc="Downloading bytes", unit="B", total=0)
    written = cls(desc="Reconstructing (incomplete total...)", unit="B", total=0)
    files.update(1)
    transfer.update(20)
    written.update(20)
    written.set_postfix_str("x")  # unknown methods are harmless no-ops
    assert meter.done_bytes == 20 and written.format_dict["n"] == 20


def _fake_snapshot(hub_dir: Path, files: dict[str, bytes], patterns: tuple[str, ...]) -> Manifest:
    commit = "a" * 40
    snap = snapshot_dir(hub_dir, "org/model", commit)
    for rel, data in files.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).write_bytes(data)
    manifest = Manifest("org/model", "main", commit, patterns,
                        tuple(ManifestFile(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in files.items()))
    write_manifest(hub_dir, manifest)
    return manifest


def test_verify_reports_missing_short_and_corrupted_files(tmp_path: Path) -> None:
    m = _fake_snapshot(tmp_path, {"config.json": b"{}", "w.safetensors": b"0123456789"}, allow_patterns(False))
    snap = snapshot_dir(tmp_path, "org/model", m.commit)
    assert verify_snapshot(snap, m.files, hash_paths={"w.safetensors"}) == []
    (snap / "w.safetensors").write_bytes(b"0123456780")
    assert verify_snapshot(snap, m.files) == []  # same size: only the hash check sees it
    assert verify_snapshot(snap, m.files, hash_paths={"w.safetensors"}) == [
        "w.safetensors: content does not match the hub's checksum"]
    (snap / "w.safetensors").write_bytes(b"01")
    (snap / "config.json").unlink()
    assert verify_snapshot(snap, m.files) == ["config.json: missing", "w.safetensors: 2 bytes, expected 10"]


def test_local_snapshot_needs_a_manifest_of_the_same_patterns_and_intact_files(tmp_path: Path) -> None:
    m = _fake_snapshot(tmp_path, {"config.json": b"{}", "w.safetensors": b"x" * 10}, allow_patterns(False))
    found = local_snapshot(spec(), tmp_path)
    assert found is not None and found.commit == m.commit and found.total_bytes == 12
    assert local_snapshot(spec(trust_remote_code=True), tmp_path) is None  # would lack *.py files
    (snapshot_dir(tmp_path, "org/model", m.commit) / "w.safetensors").write_bytes(b"x")
    assert local_snapshot(spec(), tmp_path) is None


def test_simulated_and_real_snapshots_live_in_separate_caches(tmp_path: Path) -> None:
    assert hub_cache_dir(tmp_path, simulate=True) != hub_cache_dir(tmp_path, simulate=False)


@pytest.mark.parametrize(
    ("repo", "weights_gib", "kv_kib"),
    [
        ("Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", 5.2, 56),
        ("Qwen/Qwen2.5-Coder-14B-Instruct-AWQ", 9.3, 192),
        ("TheBloke/deepseek-coder-6.7B-instruct-AWQ", 3.6, 512),
        ("solidrust/dolphin-2.8-mistral-7b-v02-AWQ", 4.1, 128),
    ],
)
def test_catalog_repos_carry_published_dims_awq_config_and_real_weight_sizes(
    repo: str, weights_gib: float, kv_kib: int
) -> None:
    entry = load_catalog()[repo]
    assert entry.weights_bytes / GiB == pytest.approx(weights_gib, abs=0.01)
    dims = model_dims(entry.config)
    assert dims.kv_bytes_per_token() == kv_kib * 1024 and dims.quantization_method == "awq"
    files = entry.files()
    assert "tokenizer_config.json" in files and "generation_config.json" in files
    assert sum(len(b) for b in files.values()) < 64 * 1024  # header-only: kilobytes on disk
