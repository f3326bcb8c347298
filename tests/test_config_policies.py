"""The lifecycle policy keys: bad settings are validate errors with file:line (exit 2, nothing
else disturbed), good ones load and are not part of an engine's launch identity; a pinned
Ollama provider's models are never the eviction's victims."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gpumgr.actions.desired import launch_identity
from gpumgr.cli import main
from gpumgr.config import load_config
from gpumgr.gpu import OWNER_OLLAMA, GpuProcess
from gpumgr.plan import OllamaModel
from gpumgr.plan.decide import Room, decide
from test_config_invalid import PROVIDERS_OK, _replace, _write
from test_plan_decide import GIB, MIB, NEW, TOTAL, _card

SEVEN = "    status: active\n    max_model_len: 8192\n"
FOURTEEN = "    status: standby\n"


def _with(seven: str = "", fourteen: str = "") -> str:
    text = _replace(PROVIDERS_OK, SEVEN, SEVEN + seven)
    return _replace(text, FOURTEEN, FOURTEEN + fourteen)


CASES = [
    ("negative-idle", _with(fourteen="    idle: {after_s: -5, swap_to: qwen-7b}\n"),
     "providers.yaml:19:12: providers.qwen-14b.idle.after_s: must be > 0 (got -5)"),
    ("zero-idle", _with(fourteen="    idle: {after_s: 0}\n"),
     "providers.yaml:19:12: providers.qwen-14b.idle.after_s: must be > 0 (got 0)"),
    ("unknown-default", _with(fourteen="    idle: {after_s: 60, swap_to: qwen-7c}\n"),
     "providers.yaml:19:25: providers.qwen-14b.idle.swap_to: unknown provider 'qwen-7c' "
     "(did you mean 'qwen-7b'?)"),
    ("default-not-vllm", _with(fourteen="    idle: {after_s: 60, swap_to: ollama}\n"),
     "providers.yaml:19:25: providers.qwen-14b.idle.swap_to: 'ollama' is not a vLLM provider"),
    ("default-on-another-card", _with(seven="    gpu: 1\n",
                                      fourteen="    idle: {after_s: 60, swap_to: qwen-7b}\n"),
     "providers.yaml:20:25: providers.qwen-14b.idle.swap_to: 'qwen-7b' runs on GPU 1 and "
     "qwen-14b on GPU 0"),
    ("default-is-itself", _with(fourteen="    idle: {after_s: 60, swap_to: qwen-14b}\n"),
     "providers.yaml:19:25: providers.qwen-14b.idle.swap_to: swap_to names qwen-14b itself"),
    ("swap-without-target", _with(fourteen="    idle: {after_s: 60, action: swap}\n"),
     "providers.yaml:19:5: providers.qwen-14b.idle: action 'swap' needs swap_to"),
    ("sleep-without-sleep-mode", _with(fourteen="    idle: {after_s: 60, action: sleep}\n"),
     "providers.yaml:19:25: providers.qwen-14b.idle.action: action 'sleep' needs vLLM sleep mode"),
    ("demand-on-a-pin", _with(seven="    pinned: true\n    policy: demand\n"),
     "providers.yaml:13:5: providers.qwen-7b.policy: policy: demand on a pinned provider"),
    ("idle-on-a-pin", _with(seven="    pinned: true\n    idle: {after_s: 30}\n"),
     "providers.yaml:13:5: providers.qwen-7b.idle: idle on a pinned provider"),
    ("unknown-policy", _with(seven="    policy: eager\n"),
     "providers.yaml:12:5: providers.qwen-7b.policy: must be one of 'manual' or 'demand' (got 'eager')"),
    ("negative-residency", None,
     "gpumgr.yaml:3:5: policies.demand.min_residency_s: must be >= 0 (got -1)"),
]


@pytest.mark.parametrize(("case", "providers", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_policy_settings_are_located_errors(tmp_path: Path, case: str, providers: str | None,
                                                expected: str) -> None:
    files: dict[str, str | bytes] = {}
    if providers is not None:
        files["providers.yaml"] = providers
    else:
        files["gpumgr.yaml"] = "policies:\n  demand:\n    min_residency_s: -1\n"
    _write(tmp_path / "c", files)
    result = CliRunner().invoke(main, ["validate", "--config-dir", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert any(line.startswith(expected) for line in lines), f"{expected!r} not in {lines!r}"


def test_good_policies_load_and_restart_nothing(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    _write(plain, {})
    _write(tmp_path / "c", {"providers.yaml": _with(
        seven="    policy: demand\n",
        fourteen="    policy: demand\n    idle: {after_s: 600, swap_to: qwen-7b}\n"),
        "gpumgr.yaml": "policies:\n  demand: {margin: 0.3, max_swaps_per_hour: 2}\n"})
    config = load_config(tmp_path / "c")
    big = config.provider("qwen-14b")
    assert big.idle is not None and (big.idle.action, big.idle.swap_to) == ("swap", "qwen-7b")
    assert config.settings.policies.demand.max_swaps_per_hour == 2
    before = load_config(plain)
    for name in ("qwen-7b", "qwen-14b"):
        assert launch_identity(config.provider(name)) == launch_identity(before.provider(name))


def test_a_pinned_ollama_providers_models_are_never_unloaded_to_make_room() -> None:
    def card_with(models: tuple[OllamaModel, ...]) -> object:
        return _card(TOTAL, [GpuProcess(1, 300 * MIB),
                             GpuProcess(2, sum(m.vram_bytes for m in models), owner=OWNER_OLLAMA)])

    pinned_big = (OllamaModel("big", 6 * GIB, pinned=True), OllamaModel("tiny", 500 * MIB))
    for eviction in ("unload_idle", "unload_all"):
        d = decide(card_with(pinned_big), [NEW], ["new"], ollama=pinned_big,  # type: ignore[arg-type]
                   room=Room(eviction=eviction))  # type: ignore[arg-type]
        assert d.refusal is not None and d.unload == ()
        assert "unload Ollama model big" not in d.refusal.message
    pinned_tiny = (OllamaModel("big", 6 * GIB), OllamaModel("tiny", 500 * MIB, pinned=True))
    d = decide(card_with(pinned_tiny), [NEW], ["new"], ollama=pinned_tiny,  # type: ignore[arg-type]
               room=Room(eviction="unload_all"))
    assert d.ok and [m.name for m in d.unload] == ["big"]
