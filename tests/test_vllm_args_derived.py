"""vLLM arguments derived from vLLM 0.33.0's own parser table, not hand-listed (issue 10).

Managed settings are refused by ``dest`` (every alias and negation), ``--config`` is refused,
arity comes from ``action``/``nargs``, quantization is checked against vLLM's method list and the
checkpoint, and no refusal claims vLLM would reject what it accepts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm_fixtures import UUID, vllm_provider

from gpumgr.config.settings import VllmSettings
from gpumgr.engines.vllm import GpuFacts, build_vllm_launch, validate_extra_args
from gpumgr.engines.vllm_flags import ServeArgsError, parse_serve_args
from gpumgr.errors import InputError
from gpumgr.sim.vllm_engine.args import parse_args


@pytest.mark.parametrize("args", [
    ["--device-memory-utilization", "0.9"], ["--device_memory_utilization=0.9"],
    ["--no-enforce-eager"], ["--disable-sleep-mode"], ["--no-enable-sleep-mode"],
    ["--no-trust-remote-code"], ["--uds", "/tmp/v.sock"], ["--kv-cache-memory-bytes", "4G"],
    ["--num-gpu-blocks-override", "100"], ["-q", "awq"], ["-qawq"], ["--hf-token", "hf_x"],
])  # fmt: skip
def test_every_alias_and_negation_of_a_managed_setting_is_refused(args: list[str]) -> None:
    with pytest.raises(InputError, match=r"is set by gpumgr") as exc:
        validate_extra_args("qwen-7b", args)
    assert "would reject" not in str(exc.value)


def test_config_file_in_extra_args_is_refused_because_it_brings_in_any_flag() -> None:
    with pytest.raises(InputError, match=r"--config is set by gpumgr \(a config file can set any flag"):
        validate_extra_args("qwen-7b", ["--config", "serve.yaml"])


def test_the_alias_refusal_names_the_setting_it_overrides() -> None:
    with pytest.raises(InputError, match=r"extra_args\[0\]: --device-memory-utilization is set by "
                                          r"gpumgr \(vLLM's gpu_memory_utilization; the planner"):
        validate_extra_args("qwen-7b", ["--device-memory-utilization", "0.9"])


def test_an_append_flag_takes_one_value_per_use() -> None:
    with pytest.raises(InputError, match=r"extra_args\[2\]: 'b.M' is not a flag"):
        validate_extra_args("p", ["--middleware", "a.M", "b.M"])
    assert validate_extra_args("p", ["--middleware", "a.M", "--middleware", "b.M"]) == [
        "--middleware", "a.M", "--middleware", "b.M"]


MULTI_VALUE = ["--allowed-media-domains", "--collect-detailed-traces", "--cpu-offload-params",
               "--cudagraph-capture-sizes", "--ignore-patterns", "--kv-cache-dtype-skip-layers",
               "--logits-processors", "--lora-target-modules", "--numa-bind-cpus",
               "--numa-bind-nodes", "--offload-params", "--sleep-preserve-parameter-names"]  # fmt: skip


@pytest.mark.parametrize("flag", MULTI_VALUE)
def test_the_twelve_multi_value_flags_take_several_values(flag: str) -> None:
    assert validate_extra_args("p", [flag, "1", "2", "--seed", "3"]) == [flag, "1", "2", "--seed", "3"]


@pytest.mark.parametrize("args", [["-O3"], ["-O", "3"], ["-O=2"], ["-O.mode=3"],
                                  ["--compilation-config.cudagraph_mode", "PIECEWISE"],
                                  ["-tp", "1"], ["-r", "0"], ["--seed", "-1"]])  # fmt: skip
def test_what_vllm_accepts_is_accepted(args: list[str]) -> None:
    validate_extra_args("p", args)


def test_dotted_json_keys_keep_their_underscores_and_one_token_form() -> None:
    assert validate_extra_args("p", ["--compilation_config.cudagraph_mode", "PIECEWISE", "-O.mode=3"]) == [
        "--compilation-config.cudagraph_mode=PIECEWISE", "--compilation-config.mode=3"]


def test_short_options_take_attached_values_like_argparse() -> None:
    parsed = parse_serve_args(["m", "-qawq", "-r0"])
    assert parsed.value("quantization") == "awq" and parsed.value("node_rank") == "0"
    assert parse_serve_args(["-O3"]).value("optimization_level") == "3"


def test_refusals_of_what_vllm_rejects_say_so() -> None:
    with pytest.raises(InputError, match=r"would reject these: unrecognized arguments: --max-modle-len"):
        validate_extra_args("p", ["--max-modle-len", "4096"])
    with pytest.raises(InputError, match=r"would reject these: argument -r: invalid int value: 'main'"):
        validate_extra_args("p", ["-r", "main"])


# --- quantization ------------------------------------------------------------------------------

def _launch(tmp_path: Path, checkpoint: str | None = None, **kw: object) -> list[str]:
    return build_vllm_launch(
        vllm_provider(**kw), fraction=0.5, snapshot_dir=tmp_path, gpu=GpuFacts(UUID),
        settings=VllmSettings(), base_env={}, checkpoint_quantization=checkpoint,
    ).argv


def _quant(argv: list[str]) -> str | None:
    return argv[argv.index("--quantization") + 1] if "--quantization" in argv else None


@pytest.mark.parametrize("method", ["bitsandbytes", "gguf", "petit_nvfp4", "4bit"])
def test_a_provider_level_method_vllm_does_not_have_is_refused_at_launch(tmp_path: Path, method: str) -> None:
    with pytest.raises(InputError, match=r"quantization: .* is not a quantization method of vLLM 0.33.0"):
        _launch(tmp_path, quantization=method)


def test_an_awq_description_on_a_compressed_tensors_checkpoint_does_not_launch_awq_marlin(
    tmp_path: Path,
) -> None:
    assert _quant(_launch(tmp_path)) == "awq_marlin"  # AWQ description, checkpoint unknown
    assert _quant(_launch(tmp_path, "awq")) == "awq_marlin"
    assert _quant(_launch(tmp_path, "compressed-tensors")) is None


def test_a_provider_level_method_that_does_not_fit_the_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'awq' does not fit the checkpoint, whose config.json says 'gptq'"):
        _launch(tmp_path, "gptq", quantization="awq")
    assert _quant(_launch(tmp_path, "awq", quantization="AWQ_Marlin")) == "awq_marlin"


# --- the simulated engine parses with the same table -------------------------------------------

def test_the_simulated_engine_reads_settings_by_dest() -> None:
    a = parse_args(["serve", "m", "--device-memory-utilization", "0.5", "--enable-sleep-mode",
                    "--disable-sleep-mode", "--enforce-eager", "-qawq_marlin"])  # fmt: skip
    assert a.fraction == 0.5 and a.enable_sleep_mode is False and a.enforce_eager is True
    assert a.quantization == "awq_marlin"


@pytest.mark.parametrize("args, message", [
    (["--middleware", "a", "b"], "unrecognized arguments: b"),
    (["--quantization", "gguf"], "Unknown quantization method: gguf"),
    (["--quantization", "fbgemm_fp8"], "deprecated"),
])  # fmt: skip
def test_the_simulated_engine_rejects_what_vllm_rejects(args: list[str], message: str) -> None:
    with pytest.raises(ServeArgsError, match=message):
        parse_args(["serve", "m", *args])
    parse_args(["serve", "m", "--quantization", "fbgemm_fp8", "--allow-deprecated-quantization"])
