"""The package's vLLM tables are generated from ``shared/reference`` and cannot drift from it;
``engines/vllm_flags.py`` holds no hand-written flag list."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from gpumgr.engines import vllm_flags, vllm_reference

REFERENCE = REPO_ROOT.parent / "shared" / "reference"


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_vllm_tables", REPO_ROOT / "scripts" / "gen_vllm_tables.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference is not beside the repository")
def test_the_packaged_tables_are_what_the_generator_makes_from_the_reference() -> None:
    render = getattr(_generator(), "render")
    packaged = Path(vllm_reference.__file__).read_text(encoding="utf-8")
    assert render(REFERENCE) == packaged, "run: python scripts/gen_vllm_tables.py"


def test_vllm_flags_holds_no_hand_written_option_strings() -> None:
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
