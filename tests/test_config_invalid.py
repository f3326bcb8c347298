"""Every invalid configuration gets one located line per problem, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gpumgr.cli import main

PROVIDERS_OK = """\
providers:
  ollama:
    type: ollama
    base_url: http://127.0.0.1:11434
    models:
      - qwen2.5-coder:7b
  qwen-7b:
    type: vllm
    base_url: http://127.0.0.1:8001
    status: active
    max_model_len: 8192
    models:
      - name: qwen-coder-vllm
        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
  qwen-14b:
    type: vllm
    base_url: http://127.0.0.1:8001
    status: standby
    models:
      - name: qwen-coder-14b-vllm
        hf_repo: Qwen/Qwen2.5-Coder-14B-Instruct-AWQ
"""

MAPPINGS_OK = """\
exact_matches:
  qwen-coder-vllm: {provider: qwen-7b}
fallback_chains:
  qwen-coder-vllm: {chain: [qwen2.5-coder:7b]}
"""


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (case id, {file: content}, expected lines (each must appear exactly in stderr))
CASES: list[tuple[str, dict[str, str | bytes], list[str]]] = [
    ("yaml-syntax-unclosed-bracket", {"providers.yaml": "providers:\n  a: [1, 2\n"},
     ["providers.yaml:3:1: YAML syntax error"]),
    ("yaml-syntax-bad-indent", {"providers.yaml": "providers:\n  a:\n    type: vllm\n   base_url: x\n"},
     ["providers.yaml:4:4: YAML syntax error"]),
    ("yaml-tab-indent", {"providers.yaml": "providers:\n\ta: 1\n"},
     ["providers.yaml:2:1: YAML syntax error"]),
    ("empty-providers", {"providers.yaml": ""},
     ["providers.yaml: file is empty"]),
    ("comments-only-providers", {"providers.yaml": "# nothing here\n"},
     ["providers.yaml: file is empty"]),
    ("providers-is-a-list", {"providers.yaml": "- a\n- b\n"},
     ["providers.yaml:1:1: top level must be a mapping (got a list)"]),
    ("providers-key-missing", {"providers.yaml": "metadata: {a: 1}\n"},
     ["providers.yaml:1:1: providers: required key is missing"]),
    ("non-utf8", {"providers.yaml": b"providers:\n  a:\n    description: caf\xe9\n"},
     ["providers.yaml:3:21: not valid UTF-8 (byte 0xe9)"]),
    ("ten-megabytes", {"providers.yaml": "providers: {}\n" + "# " + "x" * (10 * 1024 * 1024) + "\n"},
     ["providers.yaml: file is 10.5 MB, over the 2 MiB limit for a configuration file"]),
    ("fraction-too-large", {"providers.yaml": _replace(PROVIDERS_OK, "    max_model_len: 8192\n", "    max_model_len: 8192\n    gpu_memory_utilization: 1.5\n")},
     ["providers.yaml:12:5: providers.qwen-7b.gpu_memory_utilization: must be > 0 and <= 1 (got 1.5)"]),
    ("fraction-zero", {"providers.yaml": _replace(PROVIDERS_OK, "    max_model_len: 8192\n", "    max_model_len: 8192\n    gpu_memory_utilization: 0\n")},
     ["providers.yaml:12:5: providers.qwen-7b.gpu_memory_utilization: must be > 0 and <= 1 (got 0)"]),
    ("fraction-not-a-number", {"providers.yaml": _replace(PROVIDERS_OK, "    max_model_len: 8192\n", "    max_model_len: 8192\n    gpu_memory_utilization: lots\n")},
     ["providers.yaml:12:5: providers.qwen-7b.gpu_memory_utilization: must be a number (got 'lots')"]),
    ("max-model-len-negative", {"providers.yaml": _replace(PROVIDERS_OK, "max_model_len: 8192", "max_model_len: -5")},
     ["providers.yaml:11:5: providers.qwen-7b.max_model_len: must be > 0 (got -5)"]),
    ("max-model-len-string", {"providers.yaml": _replace(PROVIDERS_OK, "max_model_len: 8192", "max_model_len: big")},
     ["providers.yaml:11:5: providers.qwen-7b.max_model_len: must be an integer (got 'big')"]),
    ("port-out-of-range", {"providers.yaml": _replace(PROVIDERS_OK, "http://127.0.0.1:8001\n    status: active", "http://127.0.0.1:70000\n    status: active")},
     ["providers.yaml:9:5: providers.qwen-7b.base_url: port must be 1-65535 (got 'http://127.0.0.1:70000')"]),
    ("url-without-port", {"providers.yaml": _replace(PROVIDERS_OK, "http://127.0.0.1:11434", "http://127.0.0.1")},
     ["providers.yaml:4:5: providers.ollama.base_url: must carry a port, e.g. http://127.0.0.1:8001 (got 'http://127.0.0.1')"]),
    ("url-not-a-url", {"providers.yaml": _replace(PROVIDERS_OK, "http://127.0.0.1:11434", "localhost-11434")},
     ["providers.yaml:4:5: providers.ollama.base_url: must be an http(s) URL with a host (got 'localhost-11434')"]),
    ("unknown-type", {"providers.yaml": _replace(PROVIDERS_OK, "type: ollama", "type: olama")},
     ["providers.yaml:3:5: providers.ollama.type: must be one of vllm, ollama, ollama_cloud"]),
    ("unknown-status", {"providers.yaml": _replace(PROVIDERS_OK, "status: standby", "status: sleeping")},
     ["providers.yaml:18:5: providers.qwen-14b.status: must be one of active, standby, disabled, template (got 'sleeping')"]),
    ("model-entry-wrong-type", {"providers.yaml": _replace(PROVIDERS_OK, "      - qwen2.5-coder:7b\n", "      - 42\n")},
     ["providers.yaml:6:9: providers.ollama.models[0]: must be a mapping (got int)"]),
    ("model-entry-without-name", {"providers.yaml": _replace(PROVIDERS_OK, "      - name: qwen-coder-14b-vllm\n        hf_repo", "      - hf_repo")},
     ["providers.yaml:20:9: providers.qwen-14b.models[0].name: required key is missing"]),
    ("hf-repo-bad-shape", {"providers.yaml": _replace(PROVIDERS_OK, "hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "hf_repo: just-a-name")},
     ["providers.yaml:14:9: providers.qwen-7b.models[0].hf_repo: must look like 'org/repo' (got 'just-a-name')"]),
    ("served-name-looks-like-a-flag", {"providers.yaml": _replace(PROVIDERS_OK, "        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ\n", "        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ\n        served_model_name: --trust-remote-code\n")},
     ["providers.yaml:15:9: providers.qwen-7b.models[0].served_model_name: must not start with '-' (got '--trust-remote-code'): vLLM would read it as a flag"]),
    ("alias-with-space-and-flag", {"providers.yaml": _replace(PROVIDERS_OK, "        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ\n", "        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ\n        aliases: [ok, '--kv-cache-memory-bytes 1']\n")},
     ["providers.yaml:15:9: providers.qwen-7b.models[0].aliases: alias 1 must not start with '-' (got '--kv-cache-memory-bytes 1')"]),
    ("served-name-with-equals", {"providers.yaml": _replace(PROVIDERS_OK, "      - name: qwen-coder-vllm\n", "      - name: a=b\n")},
     ["providers.yaml:13:9: providers.qwen-7b.models[0]: name must not contain whitespace or '=' (got 'a=b')"]),
    ("vllm-without-repo", {"providers.yaml": _replace(PROVIDERS_OK, "        hf_repo: Qwen/Qwen2.5-Coder-14B-Instruct-AWQ\n", "")},
     ["providers.yaml:20:9: providers.qwen-14b.models[0].name: a vLLM provider needs a Hugging Face repo"]),
    ("model-size-negative", {"providers.yaml": _replace(PROVIDERS_OK, "        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ\n", "        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ\n        model_size_gb: -1\n")},
     ["providers.yaml:15:9: providers.qwen-7b.models[0].model_size_gb: must be > 0 (got -1)"]),
    ("env-var-holds-a-secret", {"providers.yaml": PROVIDERS_OK + "  cloud:\n    type: ollama_cloud\n    base_url: https://ollama.com\n    requires_api_key: true\n    env_var: sk-live-abc/def=\n    models: [x]\n"},
     ["providers.yaml:26:5: providers.cloud.env_var: must name an environment variable"]),
    ("api-key-without-env-var", {"providers.yaml": PROVIDERS_OK + "  cloud:\n    type: ollama_cloud\n    base_url: https://ollama.com\n    requires_api_key: true\n    models: [x]\n"},
     ["providers.yaml:25:5: providers.cloud.requires_api_key: requires_api_key is true but env_var does not name the variable"]),
    ("two-active-same-port", {"providers.yaml": _replace(PROVIDERS_OK, "status: standby", "status: active")},
     ["providers.yaml:17:5: providers.qwen-14b.base_url: port 8001 is already used by active provider 'qwen-7b'"]),
    ("duplicate-provider-key", {"providers.yaml": PROVIDERS_OK + "  ollama:\n    type: ollama\n    base_url: http://127.0.0.1:11435\n"},
     ["providers.yaml:22:3: providers.ollama: duplicate key"]),
    ("ambiguous-model", {"providers.yaml": PROVIDERS_OK + "  other:\n    type: openai_compatible\n    base_url: http://127.0.0.1:9000\n    models: [qwen2.5-coder:7b]\n"},
     ["providers.yaml:25:14: providers.other.models[0]: model 'qwen2.5-coder:7b' is also served by 'ollama'"]),
    ("chain-not-a-list", {"model-mappings.yaml": "fallback_chains:\n  qwen-coder-vllm: {chain: 5}\n"},
     ["model-mappings.yaml:2:21: fallback_chains.qwen-coder-vllm.chain: must be a list (got int)"]),
    ("mappings-is-a-list", {"model-mappings.yaml": "- 1\n"},
     ["model-mappings.yaml:1:1: top level must be a mapping (got a list)"]),
    ("settings-unknown-key", {"gpumgr.yaml": "listn: 127.0.0.1:9400\n"},
     ["gpumgr.yaml:1:1: listn: unknown key (did you mean 'listen'?)"]),
    ("settings-unknown-nested-key", {"gpumgr.yaml": "restart:\n  max_crash: 3\n"},
     ["gpumgr.yaml:2:3: restart.max_crash: unknown key (did you mean 'max_crashes'?)"]),
    ("settings-bad-listen", {"gpumgr.yaml": "listen: localhost\n"},
     ["gpumgr.yaml:1:1: listen: must be HOST:PORT with a port 0-65535 (got 'localhost')"]),
    ("settings-bad-eviction", {"gpumgr.yaml": "ollama:\n  eviction: sometimes\n"},
     ["gpumgr.yaml:2:3: ollama.eviction: must be one of"]),
    ("settings-negative-reserve", {"gpumgr.yaml": "gpu:\n  reserve_mib: -1\n"},
     ["gpumgr.yaml:2:3: gpu.reserve_mib: must be >= 0 (got -1)"]),
    ("settings-bool-wrong", {"gpumgr.yaml": "vllm:\n  start_timeout_s: soon\n"},
     ["gpumgr.yaml:2:3: vllm.start_timeout_s: must be a number (got 'soon')"]),
]


# References in model-mappings.yaml (the router's view): warnings with the fix, exit 0;
# `validate --strict` makes them fatal (exit 2).
ROUTER_CASES: list[tuple[str, dict[str, str | bytes], list[str]]] = [
    ("mapping-unknown-provider", {"model-mappings.yaml": _replace(MAPPINGS_OK, "provider: qwen-7b", "provider: qwen-8b")},
     ["model-mappings.yaml:2:21: exact_matches.qwen-coder-vllm.provider: unknown provider 'qwen-8b'"]),
    ("mapping-model-not-on-multi-model-provider", {"providers.yaml": _replace(PROVIDERS_OK, "      - qwen2.5-coder:7b\n", "      - qwen2.5-coder:7b\n      - llama3.1:latest\n"), "model-mappings.yaml": "exact_matches:\n  coder: {provider: ollama}\n"},
     ["model-mappings.yaml:2:3: exact_matches.coder: provider 'ollama' does not list model 'coder'; set backend_model"]),
    ("mapping-backend-model-not-on-provider", {"model-mappings.yaml": "exact_matches:\n  coder: {provider: qwen-7b, backend_model: Qwen/Qwen2.5-Coder-14B-Instruct-AWQ}\n"},
     ["model-mappings.yaml:2:30: exact_matches.coder.backend_model: provider 'qwen-7b' does not list model 'Qwen/Qwen2.5-Coder-14B-Instruct-AWQ'"]),
    ("fallback-names-nothing", {"model-mappings.yaml": "exact_matches:\n  qwen-coder-vllm: {provider: qwen-7b, fallback: olama}\n"},
     ["model-mappings.yaml:2:40: exact_matches.qwen-coder-vllm.fallback: unknown model or provider 'olama'"]),
    ("chain-unknown-model", {"model-mappings.yaml": _replace(MAPPINGS_OK, "chain: [qwen2.5-coder:7b]", "chain: [qwen2.5-coder:7b, gpt-5]")},
     ["model-mappings.yaml:4:47: fallback_chains.qwen-coder-vllm.chain[1]: unknown model 'gpt-5'"]),
    ("chain-key-unknown", {"model-mappings.yaml": MAPPINGS_OK + "  nosuch-model: {chain: [qwen-coder-vllm]}\n"},
     ["model-mappings.yaml:5:3: fallback_chains.nosuch-model: unknown model 'nosuch-model'"]),
    ("chain-entry-is-its-key", {"model-mappings.yaml": _replace(MAPPINGS_OK, "chain: [qwen2.5-coder:7b]", "chain: [qwen-coder-vllm]")},
     ["model-mappings.yaml:4:29: fallback_chains.qwen-coder-vllm.chain[0]: chain of 'qwen-coder-vllm' falls back to itself"]),
    ("chain-cycle", {"model-mappings.yaml": MAPPINGS_OK + "  qwen2.5-coder:7b: {chain: [qwen-coder-vllm]}\n"},
     ["model-mappings.yaml:4:3: fallback_chains.qwen-coder-vllm: fallback cycle: qwen-coder-vllm -> qwen2.5-coder:7b -> qwen-coder-vllm"]),
    ("preferred-model-unknown", {"model-mappings.yaml": "capabilities:\n  code:\n    preferred_models: [nope]\n"},
     ["model-mappings.yaml:3:24: capabilities.code.preferred_models[0]: unknown model 'nope'"]),
]


def _write(dir_: Path, files: dict[str, str | bytes]) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    base: dict[str, str | bytes] = {"providers.yaml": PROVIDERS_OK, "model-mappings.yaml": MAPPINGS_OK}
    base.update(files)
    for name, content in base.items():
        path = dir_ / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def test_the_base_of_the_invalid_cases_is_itself_valid(tmp_path: Path) -> None:
    _write(tmp_path / "c", {})
    result = CliRunner().invoke(main, ["validate", "--config-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 3 providers (2 vllm), 3 models, 1 chains")


def test_there_are_at_least_thirty_distinct_invalid_configurations() -> None:
    every = CASES + ROUTER_CASES
    assert len({c[0] for c in every}) == len(every) >= 30


@pytest.mark.parametrize(("case", "files", "expected"), CASES, ids=[c[0] for c in CASES])
def test_invalid_configuration_is_reported_with_file_line_and_key_path(
    tmp_path: Path, case: str, files: dict[str, str | bytes], expected: list[str]
) -> None:
    _write(tmp_path / "c", files)
    result = CliRunner().invoke(main, ["validate", "--config-dir", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    for want in expected:
        assert any(line.startswith(want) for line in lines), f"{want!r} not in {lines!r}"


def test_every_error_of_a_file_is_reported_in_one_run(tmp_path: Path) -> None:
    text = _replace(PROVIDERS_OK, "max_model_len: 8192", "max_model_len: -1\n    gpu_memory_utilization: 2")
    text = _replace(text, "type: ollama", "type: olama")
    _write(tmp_path / "c", {"providers.yaml": text, "gpumgr.yaml": "listn: x\n"})
    result = CliRunner().invoke(main, ["validate", "--config-dir", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert [line.split(": ")[1] for line in result.output.splitlines()] == [
        "providers.ollama.type",
        "providers.qwen-7b.max_model_len",
        "providers.qwen-7b.gpu_memory_utilization",
        "listn",
    ]


def test_validate_json_lists_errors(tmp_path: Path) -> None:
    import json

    _write(tmp_path / "c", {"gpumgr.yaml": "listn: x\n"})
    result = CliRunner(mix_stderr=False).invoke(
        main, ["validate", "--json", "--config-dir", str(tmp_path / "c")]
    ) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner().invoke(
        main, ["validate", "--json", "--config-dir", str(tmp_path / "c")]
    )
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert doc["errors"][0].startswith("gpumgr.yaml:1:1: listn: unknown key")


@pytest.mark.parametrize(("case", "files", "expected"), ROUTER_CASES, ids=[c[0] for c in ROUTER_CASES])
def test_a_bad_reference_in_the_routers_view_is_a_warning_and_fatal_only_with_strict(
    tmp_path: Path, case: str, files: dict[str, str | bytes], expected: list[str]
) -> None:
    _write(tmp_path / "c", files)
    result = CliRunner().invoke(main, ["validate", "--config-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for want in expected:
        where, _, rest = want.partition(": ")
        warned = f"{where}: warning: {rest}"
        assert any(line.startswith(warned) for line in lines), f"{warned!r} not in {lines!r}"
    strict = CliRunner().invoke(main, ["validate", "--strict", "--config-dir", str(tmp_path / "c")])
    assert strict.exit_code == 2, strict.output
