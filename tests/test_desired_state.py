"""Desired state: launch identities, folding the owner's file into what should run, the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumgr.actions.desired import (
    DesiredState,
    DesiredStore,
    desired_for,
    launch_identity,
)
from gpumgr.config import Config, load_config
from gpumgr.config.settings import VllmSettings
from gpumgr.status.publisher import StatusPublisher
from gpumgr.status.document import BackendStatus, DaemonInfo
from gpumgr.supervisor.records import ChildRecords


def _config(tmp_path: Path, qwen_status: str = "active", deepseek_status: str = "standby",
            qwen_extra: str = "") -> Config:
    d = tmp_path / "config"
    d.mkdir(exist_ok=True)
    (d / "providers.yaml").write_text(f"""
providers:
  qwen:
    type: vllm
    base_url: http://127.0.0.1:8001
    status: {qwen_status}
    max_model_len: 4096
    models:
      - name: qwen-coder
        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
{qwen_extra}
  deepseek:
    type: vllm
    base_url: http://127.0.0.1:8002
    status: {deepseek_status}
    models:
      - name: deepseek-coder
        hf_repo: TheBloke/deepseek-coder-6.7B-instruct-AWQ
""")
    return load_config(d, simulate=True)


def test_a_description_is_not_part_of_the_launch_identity_but_max_model_len_is(
    tmp_path: Path,
) -> None:
    base = _config(tmp_path).providers["qwen"]
    described = _config(tmp_path, qwen_extra="    description: new words\n    features: [x]\n")
    longer = _config(tmp_path, qwen_extra="    max_num_seqs: 8\n")
    assert launch_identity(described.providers["qwen"]) == launch_identity(base)
    assert launch_identity(longer.providers["qwen"]) != launch_identity(base)
    assert launch_identity(base) != launch_identity(base, VllmSettings(command="/opt/vllm/bin/vllm"))
    assert launch_identity(base) != launch_identity(base, VllmSettings(swap_mode="sleep"))


def test_the_first_boot_runs_what_the_file_marks_active(tmp_path: Path) -> None:
    assert desired_for(_config(tmp_path), None).names == {"qwen"}


def test_a_swap_survives_a_restart_while_the_files_active_set_is_unchanged(tmp_path: Path) -> None:
    config = _config(tmp_path)
    swapped = DesiredState({"deepseek": {}}, frozenset({"qwen"}))  # after `swap qwen deepseek`
    assert desired_for(config, swapped).names == {"deepseek"}


def test_the_owners_edit_of_the_active_set_wins_for_the_providers_it_touches(tmp_path: Path) -> None:
    swapped = DesiredState({"deepseek": {}}, frozenset({"qwen"}))
    # the owner now marks deepseek active and qwen standby: deepseek stays, nothing else starts
    edited = _config(tmp_path, qwen_status="standby", deepseek_status="active")
    assert desired_for(edited, swapped).names == {"deepseek"}
    # the owner marks qwen disabled while it runs: it no longer runs
    running = DesiredState({"qwen": {}}, frozenset({"qwen"}))
    assert desired_for(_config(tmp_path, qwen_status="disabled"), running).names == frozenset()


@pytest.mark.parametrize("content", ["{nope", "[]", '{"backends": 3}', ""])
def test_an_unreadable_desired_file_means_the_registry_decides(tmp_path: Path, content: str) -> None:
    store = DesiredStore(tmp_path)
    store.path.write_text(content)
    assert store.load() is None


def test_the_desired_file_round_trips_and_skips_bad_entries(tmp_path: Path) -> None:
    store = DesiredStore(tmp_path)
    store.save(DesiredState({"qwen": {"port": 8001}}, frozenset({"qwen"})))
    data = json.loads(store.path.read_text())
    assert data["version"] == 1
    data["backends"]["broken"] = "not a mapping"
    store.path.write_text(json.dumps(data))
    loaded = store.load()
    assert loaded == DesiredState({"qwen": {"port": 8001}}, frozenset({"qwen"}))


def test_child_records_of_the_wrong_shape_are_skipped_one_by_one(tmp_path: Path) -> None:
    good = {"backend": "qwen", "pid": 4242, "pgid": 4242, "create_time": 1.5,
            "cmdline": ["vllm", "serve"], "port": 8001}
    bad = [1, "x", {"backend": "a", "pid": -1, "pgid": 1, "create_time": 1.0, "cmdline": []},
           {"backend": "b", "pid": "12", "pgid": 12, "create_time": 1.0, "cmdline": []},
           {"backend": "c", "pid": True, "pgid": 12, "create_time": 1.0, "cmdline": []},
           {"backend": "d", "pid": 5, "pgid": 5, "create_time": 1.0, "cmdline": [3]},
           {"backend": "e"}]
    records = ChildRecords(tmp_path)
    records.path.write_text(json.dumps({"version": 1, "children": [*bad, good]}))
    assert list(records.load()) == ["qwen"]
    for content in ('{"children": "x"}', "[1]", '"s"'):
        records.path.write_text(content)
        assert records.load() == {}


def test_a_misspelt_status_field_is_refused_not_dropped() -> None:
    from datetime import UTC, datetime

    pub = StatusPublisher(daemon=DaemonInfo(pid=1, started_at=datetime.now(UTC)))
    pub.set_backends([BackendStatus(name="qwen", type="vllm")])
    with pytest.raises(TypeError, match="restart_count"):
        pub.update_backend("qwen", restart_count=2)  # type: ignore[call-arg]
    assert pub.update_backend("qwen", restarts=2).restarts == 2
