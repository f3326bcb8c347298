"""Every flag gpumgr puts on a vLLM command line is one vLLM 0.33.0's ``vllm serve`` accepts.

The reference is the flag list dumped from vLLM 0.33.0's own parser
(``shared/reference/vllm-0.33.0-serve-flags.tsv``), read at test time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm_fixtures import UUID, reference_flags, vllm_provider

from gpumgr.config.settings import VllmSettings
from gpumgr.vllm_tables import parser as vllm_flags
from gpumgr.engines.vllm import GpuFacts, build_vllm_launch, emitted_flags, validate_extra_args
from gpumgr.errors import InputError

def test_packaged_flag_table_is_the_reference_list() -> None:
    ref = reference_flags()
    assert vllm_flags.KNOWN_FLAGS == set(ref)
    arity = {"yes": {vllm_flags.Arity.ONE, vllm_flags.Arity.ONE_OR_MORE},
             "no": {vllm_flags.Arity.NONE}, "optional": {vllm_flags.Arity.OPTIONAL}}  # fmt: skip
    for flag, takes in ref.items():
        assert vllm_flags.FLAGS[flag].arity in arity[takes], flag


@pytest.mark.parametrize(
    "provider_kw, capability",
    [
        ({}, "7.5"),
        ({}, "8.9"),
        ({"enforce_eager": True, "trust_remote_code": True, "enable_sleep_mode": True}, "7.5"),
        ({"quantization": "awq"}, "7.5"),
        ({"extra_args": ["--kv-cache-dtype", "fp8", "--enable-prefix-caching",
                         "--max_num_batched_tokens=4096", "--seed", "-1"]}, "8.9"),
        ({"extra_args": ["--kv-cache-dtype", "auto", "--enable-prefix-caching"]}, "7.5"),
    ],
)  # fmt: skip
def test_every_emitted_flag_is_accepted_by_vllm_serve_0_33(
    provider_kw: dict[str, object], capability: str, tmp_path: Path
) -> None:
    ref = reference_flags()
    launch = build_vllm_launch(
        vllm_provider(aliases=["qwen-coder"], **provider_kw),
        fraction=0.62,
        snapshot_dir=tmp_path,
        gpu=GpuFacts(UUID, capability),
        settings=VllmSettings(),
        base_env={},
    )
    flags = emitted_flags(launch.argv)
    assert "--gpu-memory-utilization" in flags
    unknown = [f for f in flags if f not in ref]
    assert unknown == []
    for i, token in enumerate(launch.argv):
        if token.startswith("--") and "=" not in token:
            takes = ref.get(token)
            nxt = launch.argv[i + 1] if i + 1 < len(launch.argv) else None
            if takes == "yes":
                assert nxt is not None and not nxt.startswith("--"), f"{token} lacks its value"


def test_unknown_flag_in_extra_args_is_a_clear_input_error() -> None:
    with pytest.raises(InputError, match=r"providers\.qwen-7b\.extra_args\[0\]: .*--max-modle-len"):
        validate_extra_args("qwen-7b", ["--max-modle-len", "4096"])


def test_extra_args_may_not_override_what_gpumgr_plans() -> None:
    with pytest.raises(InputError, match=r"--gpu-memory-utilization is set by gpumgr"):
        validate_extra_args("qwen-7b", ["--gpu-memory-utilization=0.9"])
    with pytest.raises(InputError, match=r"--port is set by gpumgr"):
        validate_extra_args("qwen-7b", ["--port", "9000"])


def test_a_secret_in_extra_args_is_refused_and_points_to_env_var() -> None:
    with pytest.raises(InputError, match=r"--api-key .*env_var"):
        validate_extra_args("qwen-7b", ["--api-key", "sk-secret"])


def test_extra_args_switch_given_a_value_or_a_flag_missing_its_value_is_refused() -> None:
    with pytest.raises(InputError, match="ignored explicit argument"):
        validate_extra_args("qwen-7b", ["--enable-prefix-caching=yes"])
    with pytest.raises(InputError, match="expected one argument"):
        validate_extra_args("qwen-7b", ["--kv-cache-dtype"])
    with pytest.raises(InputError, match="not a flag"):
        validate_extra_args("qwen-7b", ["--enable-prefix-caching", "stray"])


def test_extra_args_are_canonicalised_to_dashes() -> None:
    assert validate_extra_args("p", ["--max_num_batched_tokens", "4096"]) == [
        "--max-num-batched-tokens",
        "4096",
    ]
