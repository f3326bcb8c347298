"""The package's vLLM tables are generated from ``shared/reference``, one module per release,
and cannot drift from it; the parser holds no hand-written flag list; each provider is checked
against its own release's table."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO_ROOT

from gpumgr.config.registry import Provider
from gpumgr.config.vllm_checks import provider_release
from gpumgr.vllm_tables import parser as vllm_flags
from gpumgr.vllm_tables.parser import ServeArgsError, check_extra_args
from gpumgr.vllm_tables.releases import KNOWN_VERSIONS, NEWEST_KNOWN, release_for, table

REFERENCE = REPO_ROOT.parent / "shared" / "reference"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(),
                                     reason="../shared/reference is not beside the repository")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_vllm_tables", REPO_ROOT / "scripts" / "gen_vllm_tables.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_reference
def test_the_package_has_a_table_module_for_every_release_in_the_reference() -> None:
    gen = _generator()
    assert tuple(gen.releases(REFERENCE)) == KNOWN_VERSIONS
    assert KNOWN_VERSIONS == ("0.33.0", "0.34.0")


@needs_reference
@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_the_packaged_tables_are_what_the_generator_makes_from_the_reference(version: str) -> None:
    gen = _generator()
    module = importlib.import_module(f"gpumgr.vllm_tables.{gen.module_name(version)}")
    packaged = Path(str(module.__file__)).read_text(encoding="utf-8")
    assert gen.render(REFERENCE, version) == packaged, "run: python scripts/gen_vllm_tables.py"


def test_the_tables_package_is_a_leaf() -> None:
    """It imports nothing of gpumgr outside itself (config, engines and sim all read it)."""
    pkg = REPO_ROOT / "daemon" / "gpumgr" / "vllm_tables"
    for path in pkg.glob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.match(r"\s*(?:from|import)\s+(gpumgr[\w.]*)", line)
            if m:
                assert m.group(1).startswith("gpumgr.vllm_tables"), (path.name, line)


def test_config_no_longer_imports_the_engines_package() -> None:
    cfg = REPO_ROOT / "daemon" / "gpumgr" / "config"
    offenders = [p.name for p in cfg.glob("*.py") if "gpumgr.engines" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_the_parser_holds_no_hand_written_option_strings() -> None:
    source = Path(vllm_flags.__file__).read_text(encoding="utf-8")
    options = set(re.findall(r"""["'](--?[a-z][a-z0-9-]+)""", source))
    # only the spellings vLLM's own preprocessing rewrites (-O forms) may appear literally
    assert options <= {"--compilation-config", "--optimization-level"}, options


def test_the_table_knows_every_option_and_its_dest() -> None:
    assert len(vllm_flags.FLAGS) == 485
    assert vllm_flags.FLAGS_BY_DEST["gpu_memory_utilization"] == (
        "--device-memory-utilization", "--gpu-memory-utilization")
    assert set(vllm_flags.FLAGS_BY_DEST["enable_sleep_mode"]) == {
        "--enable-sleep-mode", "--disable-sleep-mode", "--no-enable-sleep-mode"}
    assert vllm_flags.FLAGS["--middleware"].appends
    assert vllm_flags.FLAGS["--middleware"].arity is vllm_flags.Arity.ONE
    assert "bitsandbytes" not in vllm_flags.QUANTIZATION_METHODS
    assert {"fbgemm_fp8", "fp_quant"} == vllm_flags.DEPRECATED_QUANTIZATION_METHODS


def test_0_34_knows_the_extensible_kv_cache_switch_and_its_new_quantization_methods() -> None:
    t = table("0.34.0")
    assert len(t.flags) == 496
    assert set(t.by_dest["enable_extensible_kv_cache"]) == {
        "--enable-extensible-kv-cache", "--disable-extensible-kv-cache",
        "--no-enable-extensible-kv-cache"}
    assert t.flags["--no-enable-extensible-kv-cache"].negates
    assert {"w4afp8", "lut_b_moe", "mxfp4_hadamard32"} <= t.quantization_methods
    assert "fp_quant" not in t.quantization_methods
    assert t.deprecated_quantization_methods == {"fbgemm_fp8"}


def test_extra_args_are_checked_against_the_providers_own_release() -> None:
    new_flag = ["--max-num-inflight-kv-loads", "4"]
    with pytest.raises(ServeArgsError, match=r"vllm serve 0\.33\.0 would reject these: "
                                             r"unrecognized arguments: --max-num-inflight-kv-loads"):
        check_extra_args(new_flag, table("0.33.0"))
    assert check_extra_args(new_flag, table("0.34.0")) == new_flag


def test_arity_comes_from_the_release_table() -> None:
    with pytest.raises(ServeArgsError, match="expected one argument"):
        check_extra_args(["--cache-aware-admission-window"], table("0.34.0"))
    with pytest.raises(ServeArgsError, match="ignored explicit argument"):
        check_extra_args(["--shuffle-safetensors-files=1"], table("0.34.0"))


def test_a_pinned_provider_is_checked_against_its_pin_and_an_unpinned_one_against_0_33() -> None:
    pinned = Provider(type="vllm", vllm_version="0.34.0")
    assert provider_release(pinned).flags.version == "0.34.0"
    assert provider_release(Provider(type="vllm")).flags.version == "0.33.0"
    assert provider_release(Provider(type="vllm"), probed="0.34.1").flags.version == "0.34.0"


@pytest.mark.parametrize("reported, table_version, newer", [
    ("0.33.0", "0.33.0", False), ("0.34.0", "0.34.0", False), ("0.34.3rc1", "0.34.0", False),
    ("0.35.0", NEWEST_KNOWN, True), ("0.30.1", "0.33.0", False), (None, "0.33.0", False),
])  # fmt: skip
def test_a_reported_version_picks_the_newest_table_not_after_it(
    reported: str | None, table_version: str, newer: bool
) -> None:
    r = release_for(reported)
    assert (r.table_version, r.newer_than_known) == (table_version, newer)


def test_validate_without_a_known_release_accepts_what_some_known_release_accepts() -> None:
    from gpumgr.config.source import YamlSource
    from gpumgr.config.vllm_checks import check_vllm_provider

    src = YamlSource("providers.yaml", {})
    kw: dict[str, object] = {"type": "vllm", "name": "q", "base_url": "http://127.0.0.1:8001",
                             "models": [{"name": "q", "hf_repo": "org/q"}]}
    new_flag = ["--max-num-inflight-kv-loads", "2"]
    assert check_vllm_provider(Provider(**kw, extra_args=new_flag), src) == []
    pinned = Provider(**kw, extra_args=new_flag, vllm_version="0.33.0")
    [issue] = check_vllm_provider(pinned, src)
    assert "vllm serve 0.33.0 would reject these" in issue.message
    [typo] = check_vllm_provider(Provider(**kw, extra_args=["--max-num-seq", "2"]), src)
    assert "unrecognized arguments: --max-num-seq" in typo.message


def test_no_managed_flag_was_renamed_or_removed_between_0_33_and_0_34() -> None:
    old, new = table("0.33.0"), table("0.34.0")
    for dest in vllm_flags.MANAGED_DESTS:
        assert old.by_dest.get(dest) == new.by_dest.get(dest), dest
    assert set(old.flags) <= set(new.flags)  # 0.34 removed nothing
    assert old.flags["--gpu-memory-utilization"].arity == new.flags["--gpu-memory-utilization"].arity
