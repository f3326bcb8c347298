"""Numbers read back from the state files are finite and in range, or ignored with a log line:
``startup.json``, ``children.json``, ``desired.json`` (never an exception, never a number that
breaks a status flush later)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gpumgr.actions.desired import DesiredStore
from gpumgr.actions.startup_times import StartupTimes
from gpumgr.backend_state import BackendState
from gpumgr.state_numbers import all_finite, int_in, number_in
from gpumgr.status_wiring import _load_progress
from gpumgr.supervisor.records import ChildRecords

BAD_SECONDS = ["Infinity", "-Infinity", "NaN", "1e308", "1e999", "-3", "0", "\"41\"", "true",
               "null", "[1]", "1" + "0" * 400, "100000"]


@pytest.mark.parametrize("bad", BAD_SECONDS)
def test_a_bad_startup_time_is_ignored_with_a_log_line_and_the_good_ones_kept(
    tmp_path: Path, bad: str
) -> None:
    (tmp_path / "startup.json").write_text(f'{{"qwen": {bad}, "deepseek": 41.5}}')
    with capture_logs() as logs:
        times = StartupTimes(tmp_path)
    assert times.expected_s("qwen") is None
    assert times.expected_s("deepseek") == 41.5
    assert [(e["event"], e["backend"]) for e in logs] == [("startup_times.ignored", "qwen")]


@pytest.mark.parametrize("content", ["[1, 2]", "\"x\"", "{", "", "\x00\xff"])
def test_a_startup_file_of_the_wrong_shape_is_empty_and_logged(tmp_path: Path, content: str) -> None:
    (tmp_path / "startup.json").write_text(content, encoding="latin-1")
    with capture_logs() as logs:
        times = StartupTimes(tmp_path)
    assert times.expected_s("qwen") is None
    assert [e["event"] for e in logs] == ["startup_times.unreadable"]


def test_every_kept_startup_time_gives_a_status_flush_a_finite_eta(tmp_path: Path) -> None:
    """The load-progress fields of a status flush, fed every number that survives the file."""
    (tmp_path / "startup.json").write_text(
        '{' + ", ".join(f'"b{i}": {v}' for i, v in enumerate(BAD_SECONDS + ["86400", "0.01"]))
        + '}'
    )
    times = StartupTimes(tmp_path)

    class Loading:  # the two fields of a starting BackendHealth that the flush reads
        state = BackendState.STARTING
        since = time.time() - 5.0
        reason = "spawned"

    kept = [times.expected_s(f"b{i}") for i in range(len(BAD_SECONDS) + 2)]
    assert [k for k in kept if k is not None] == [86400.0, 0.01]
    for expected in kept:
        changes = _load_progress(Loading(), expected)  # type: ignore[arg-type]
        assert all(not isinstance(v, float) or math.isfinite(v) for v in changes.values())


def test_a_measured_start_out_of_range_is_not_recorded(tmp_path: Path) -> None:
    times = StartupTimes(tmp_path)
    times.record("qwen", math.inf)
    times.record("qwen", -1.0)
    assert times.expected_s("qwen") is None and not (tmp_path / "startup.json").exists()
    times.record("qwen", 12.345)
    assert json.loads((tmp_path / "startup.json").read_text()) == {"qwen": 12.35}


GOOD = {"backend": "qwen", "pid": 4242, "pgid": 4242, "create_time": 1.7e9, "cmdline": ["vllm"],
        "port": 8000, "fraction": 0.5}


@pytest.mark.parametrize("field,value", [
    ("pid", 1 << 40), ("pgid", 0), ("create_time", math.inf), ("create_time", math.nan),
    ("create_time", 1e308), ("create_time", -5.0), ("port", 70000), ("port", 0),
    ("fraction", 1.5), ("fraction", math.nan), ("fraction", 0), ("extra", {"x": math.inf}),
])
def test_a_child_record_with_a_number_out_of_range_is_skipped_with_a_log_line(
    tmp_path: Path, field: str, value: object
) -> None:
    other = {**GOOD, "backend": "deepseek"}
    bad = {**GOOD, field: value}
    (tmp_path / "children.json").write_text(json.dumps({"version": 1, "children": [bad, other]}))
    with capture_logs() as logs:
        records = ChildRecords(tmp_path).load()
    assert list(records) == ["deepseek"]
    assert [(e["event"], e["index"]) for e in logs] == [("supervisor.record_ignored", 0)]


def test_a_desired_entry_with_a_non_finite_number_is_ignored_with_a_log_line(tmp_path: Path) -> None:
    backends = {"qwen": {"identity": {"port": float("inf")}, "asleep": False},
                "deepseek": {"identity": {"port": 8001, "gpu_memory_utilization": 0.4}}}
    (tmp_path / "desired.json").write_text(
        json.dumps({"version": 1, "registry_active": ["qwen"], "backends": backends})
    )
    with capture_logs() as logs:
        state = DesiredStore(tmp_path).load()
    assert state is not None and state.names == {"deepseek"}
    assert [(e["event"], e["backend"]) for e in logs] == [("desired.entry_ignored", "qwen")]


def test_number_checks() -> None:
    assert number_in(3, 0, 5) == 3.0 and number_in(0, 0, 5) == 0.0
    assert number_in(0, 0, 5, low_open=True) is None
    assert number_in(10**400, 0, math.inf) is None
    assert number_in(True, 0, 5) is None and number_in("3", 0, 5) is None
    assert int_in(3.0, 0, 5) is None and int_in(5, 0, 5) == 5
    assert all_finite({"a": [1, 2.5, {"b": "inf"}]}) and not all_finite([{"a": [math.nan]}])
