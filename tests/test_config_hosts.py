"""Loopback hosts: same-port collisions normalise every spelling of this machine; a managed
vLLM provider's base_url must name a loopback host, which is exactly what the engine binds."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from vllm_fixtures import UUID, vllm_provider

from gpumgr.cli import main
from gpumgr.config.hosts import bind_address, collision_host, is_loopback
from gpumgr.config.settings import VllmSettings
from gpumgr.engines.vllm import GpuFacts, build_vllm_launch


def _two_vllm(tmp_path: Path, host_a: str, host_b: str, status_b: str = "active") -> Path:
    (tmp_path / "providers.yaml").write_text(f"""\
providers:
  a:
    type: vllm
    base_url: http://{host_a}:8001
    models: [{{name: a, hf_repo: Qwen/A}}]
  b:
    type: vllm
    status: {status_b}
    base_url: http://{host_b}:8001
    models: [{{name: b, hf_repo: Qwen/B}}]
""")
    return tmp_path


def _validate(cfg: Path) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["validate", "--config-dir", str(cfg)])
    return r.exit_code, r.stderr


@pytest.mark.parametrize("other", ["localhost", "0.0.0.0", "[::1]", "127.0.0.1", "LOCALHOST"])
def test_two_active_vllm_on_one_port_collide_however_loopback_is_spelt(tmp_path: Path, other: str) -> None:
    code, err = _validate(_two_vllm(tmp_path, "127.0.0.1", other))
    if other == "0.0.0.0":
        # 0.0.0.0 is not a loopback bind for a managed server: refused on its own line as well
        assert "providers.b.base_url: host '0.0.0.0' is not a loopback address" in err
    assert code == 2
    assert "providers.b.base_url: port 8001 is already used by active provider 'a'" in err


def test_swap_partners_on_one_port_stay_valid_whatever_the_spelling(tmp_path: Path) -> None:
    assert _validate(_two_vllm(tmp_path, "127.0.0.1", "localhost", status_b="standby"))[0] == 0


@pytest.mark.parametrize("host", ["192.168.1.20", "gpu-box.lan", "0.0.0.0", "[2001:db8::1]"])
@pytest.mark.parametrize("status", ["active", "standby"])
def test_a_managed_vllm_on_a_non_loopback_host_is_refused_with_the_fix(
    tmp_path: Path, host: str, status: str
) -> None:
    (tmp_path / "providers.yaml").write_text(f"""\
providers:
  remote:
    type: vllm
    status: {status}
    base_url: http://{host}:8001
    models: [{{name: a, hf_repo: Qwen/A}}]
""")
    code, err = _validate(tmp_path)
    assert code == 2
    assert "providers.yaml:5:5: providers.remote.base_url: host" in err
    assert "use http://127.0.0.1:8001" in err and "type: openai_compatible" in err


def test_a_template_or_disabled_vllm_on_another_host_is_only_listed(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text("""\
providers:
  remote:
    type: vllm
    status: template
    base_url: http://gpu-box.lan:8001
    models: [{name: a, hf_repo: Qwen/A}]
""")
    assert _validate(tmp_path)[0] == 0


@pytest.mark.parametrize(("url", "bound"), [
    ("http://127.0.0.1:8001", "127.0.0.1"), ("http://[::1]:8001", "::1"),
    ("http://localhost:8001", "127.0.0.1"), ("http://127.0.0.2:8001", "127.0.0.2"),
])  # fmt: skip
def test_the_engine_binds_the_loopback_host_its_base_url_names(
    tmp_path: Path, url: str, bound: str
) -> None:
    launch = build_vllm_launch(
        vllm_provider(base_url=url), fraction=0.5, snapshot_dir=tmp_path,
        gpu=GpuFacts(UUID), settings=VllmSettings(), base_env={},
    )
    argv = launch.argv
    assert argv[argv.index("--host") + 1] == bound


def test_loopback_helpers() -> None:
    assert all(is_loopback(h) for h in ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost",
                                        "::ffff:127.0.0.1"])  # fmt: skip
    assert not any(is_loopback(h) for h in ["0.0.0.0", "10.0.0.1", "gpu-box", None, ""])
    assert len({collision_host(h) for h in ["127.0.0.1", "localhost", "0.0.0.0", "::1", "::"]}) == 1
    assert collision_host("10.0.0.1") != collision_host("127.0.0.1")
    assert bind_address("[::1]") == "::1" and bind_address("localhost") == "127.0.0.1"
