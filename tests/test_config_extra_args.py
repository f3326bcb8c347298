"""``extra_args`` and a provider-level ``quantization`` are checked when the file is read
(``validate``, ``plan``, every reload), not first at launch: a standby provider with a flag vLLM
would reject fails validation instead of a swap after six restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gpumgr.cli import main
from gpumgr.config import load_config
from gpumgr.errors import ConfigError


def _standby_with(example_config: Path, lines: str) -> Path:
    path = example_config / "providers.yaml"
    text = path.read_text()
    anchor = "    status: standby\n    health_endpoint: /health\n    max_model_len: 8192\n"  # qwen-14b
    assert anchor in text
    path.write_text(text.replace(anchor, anchor + lines, 1))
    return example_config


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize("args, message", [
    ('["--max-modle-len", "4096"]', "would reject these: unrecognized arguments: --max-modle-len"),
    ('["--middleware", "a.M", "b.M"]', "'b.M' is not a flag nor a flag's value"),
    ('["--no-enforce-eager"]', "--no-enforce-eager is set by gpumgr"),
    ('["--config", "x.yaml"]', "--config is set by gpumgr"),
])  # fmt: skip
def test_a_standby_providers_bad_extra_args_fail_validate_with_a_location(
    example_config: Path, args: str, message: str
) -> None:
    cfg = _standby_with(example_config, f"    extra_args: {args}\n")
    r = CliRunner().invoke(main, ["validate", "--config-dir", str(cfg)])
    assert r.exit_code == 2
    line = _line_of(cfg / "providers.yaml", "extra_args")
    assert f"providers.yaml:{line}:" in r.stderr
    assert "providers.qwen-14b.extra_args" in r.stderr and message in r.stderr


def test_a_reload_refuses_them_too(example_config: Path) -> None:
    cfg = _standby_with(example_config, '    extra_args: ["--device-memory-utilization", "0.9"]\n')
    with pytest.raises(ConfigError, match=r"qwen-14b\.extra_args\[0\]: --device-memory-utilization"):
        load_config(cfg)


def test_valid_extra_args_pass(example_config: Path) -> None:
    cfg = _standby_with(example_config, '    extra_args: ["-O3", "--enable-prefix-caching", '
                                        '"--cudagraph-capture-sizes", "1", "2", "4"]\n')
    assert load_config(cfg).provider("qwen-14b").extra_args[0] == "-O3"


@pytest.mark.parametrize("method", ["bitsandbytes", "gguf", "petit_nvfp4"])
def test_a_provider_level_quantization_vllm_lacks_fails_validate(example_config: Path, method: str) -> None:
    cfg = _standby_with(example_config, f"    quantization: {method}\n")
    r = CliRunner().invoke(main, ["validate", "--config-dir", str(cfg)])
    assert r.exit_code == 2
    assert f"providers.qwen-14b.quantization: '{method}' is not a quantization method of vLLM 0.33.0" in r.stderr


def test_a_deprecated_method_needs_vllms_own_opt_in(example_config: Path) -> None:
    cfg = _standby_with(example_config, "    quantization: fbgemm_fp8\n")
    r = CliRunner().invoke(main, ["validate", "--config-dir", str(cfg)])
    assert r.exit_code == 2 and "'fbgemm_fp8' is deprecated in vLLM 0.33.0" in r.stderr
    path = cfg / "providers.yaml"
    path.write_text(path.read_text().replace(
        "    quantization: fbgemm_fp8\n",
        '    quantization: fbgemm_fp8\n    extra_args: ["--allow-deprecated-quantization"]\n'))
    assert CliRunner().invoke(main, ["validate", "--config-dir", str(cfg)]).exit_code == 0
