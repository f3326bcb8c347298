"""YAML merge keys (``<<: *base``) are valid and common in registries: flattened, with positions
pointing into the merged source."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from gpumgr.cli import main
from gpumgr.config import load_config

PROVIDERS = """\
x-vllm: &vllm
  type: vllm
  status: standby
  max_model_len: 4096
  max_num_seqs: 8
x-awq: &awq
  quantization: awq
  max_num_seqs: 4
providers:
  a:
    <<: *vllm
    base_url: http://127.0.0.1:8001
    models: [{name: a-model, hf_repo: Qwen/A}]
  b:
    <<: [*vllm, *awq]
    status: active
    base_url: http://127.0.0.1:8002
    models: [{name: b-model, hf_repo: Qwen/B}]
"""


def _dir(tmp_path: Path, text: str) -> Path:
    (tmp_path / "providers.yaml").write_text(text)
    return tmp_path


def test_merge_keys_are_flattened_own_keys_first_then_the_first_source(tmp_path: Path) -> None:
    cfg = load_config(_dir(tmp_path, PROVIDERS))
    a, b = cfg.provider("a"), cfg.provider("b")
    assert (a.type.value, a.status.value, a.max_model_len, a.max_num_seqs) == ("vllm", "standby", 4096, 8)
    assert b.status.value == "active"  # the mapping's own key wins
    assert b.max_num_seqs == 8  # the first merged mapping wins over the second
    assert b.quantization == "awq"


def test_an_error_in_a_merged_key_points_into_the_merged_source(tmp_path: Path) -> None:
    text = PROVIDERS.replace("  max_model_len: 4096\n", "  max_model_len: 0\n")
    r = CliRunner().invoke(main, ["validate", "--config-dir", str(_dir(tmp_path, text))])
    assert r.exit_code == 2
    assert "providers.yaml:4:3: providers.a.max_model_len: must be > 0 (got 0)" in r.stderr.splitlines()


def test_a_merge_of_a_scalar_is_a_located_error_not_a_traceback(tmp_path: Path) -> None:
    text = PROVIDERS.replace("<<: *vllm\n", "<<: 5\n")
    r = CliRunner().invoke(main, ["validate", "--config-dir", str(_dir(tmp_path, text))])
    assert r.exit_code == 2
    assert "providers.yaml:11:9: providers.a: a merge key '<<' takes a mapping" in r.stderr
