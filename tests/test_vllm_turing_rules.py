"""Turing rules keyed on compute capability and vLLM release (pure), and a launch that refuses
what would die in the engine's first forward pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm_fixtures import UUID, vllm_provider

from gpumgr.config.settings import VllmSettings
from gpumgr.engines.vllm import GpuFacts, build_vllm_launch
from gpumgr.errors import InputError
from gpumgr.vllm_tables.releases import release_for
from gpumgr.vllm_tables.rules import card_findings, turing_methods

TURING, ADA = (7, 5), (8, 9)
FP8_KV = ["--kv-cache-dtype", "fp8_e5m2"]


def test_fp8_kv_cache_on_turing_from_0_24_is_an_error_naming_the_issue_and_the_fix() -> None:
    [f] = card_findings(FP8_KV, None, release_for("0.33.0"), TURING, "Quadro RTX 5000")
    assert f.level == "error" and "vllm#47549" in f.message and "SM89" in f.message
    assert "--kv-cache-dtype auto" in f.fix


def test_fp8_kv_cache_is_fine_on_ada_and_on_turing_before_0_24() -> None:
    assert card_findings(FP8_KV, None, release_for("0.33.0"), ADA) == []
    assert card_findings(FP8_KV, None, release_for("0.23.1"), TURING) == []


def test_fp8_weights_on_turing_are_refused_and_awq_is_not() -> None:
    [f] = card_findings([], "fp8", release_for("0.33.0"), TURING)
    assert f.level == "error" and "awq_marlin" in f.fix
    assert card_findings([], "awq_marlin", release_for("0.33.0"), TURING) == []
    [w] = card_findings([], "experts_int8", release_for("0.33.0"), TURING)
    assert w.level == "warning"


def test_0_34_on_turing_warns_about_the_v2_only_runner_with_the_command_to_check() -> None:
    [w] = card_findings([], "awq_marlin", release_for("0.34.0"), TURING)
    assert w.level == "warning" and "V2 model runner" in w.message and "vllm serve" in w.fix
    assert card_findings([], None, release_for("0.34.0"), ADA) == []


def test_the_turing_methods_are_the_releases_own() -> None:
    assert "awq_marlin" in turing_methods(release_for("0.34.0"))
    assert not [m for m in turing_methods(release_for("0.34.0")) if "fp8" in m]


def test_a_launch_on_turing_refuses_an_fp8_kv_cache(tmp_path: Path) -> None:
    provider = vllm_provider(extra_args=FP8_KV)
    with pytest.raises(InputError, match=r"providers\.qwen-7b: --kv-cache-dtype fp8_e5m2 fails"):
        build_vllm_launch(provider, fraction=0.6, snapshot_dir=tmp_path, gpu=GpuFacts(UUID, "7.5"),
                          settings=VllmSettings(), is_executable=lambda _p: False)  # fmt: skip
    launch = build_vllm_launch(provider, fraction=0.6, snapshot_dir=tmp_path,
                               gpu=GpuFacts(UUID, "8.9"), settings=VllmSettings(),
                               is_executable=lambda _p: False)  # fmt: skip
    assert "fp8_e5m2" in launch.argv
