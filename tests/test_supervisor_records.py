"""Child records and log files: atomic records, identity checks for adoption, rotation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from helpers import wait_for
from gpumgr.supervisor.logs import last_error, rotate_before_start, rotate_live, tail_lines
from gpumgr.supervisor.process import SPAWN_MARKER_ENV
from gpumgr.supervisor.records import (
    ChildRecord,
    ChildRecords,
    is_same_process,
    not_ours,
    port_listener_pid,
)


MARKER = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def sleeper() -> Iterator[psutil.Process]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                            env={**os.environ, SPAWN_MARKER_ENV: MARKER})
    try:
        child = psutil.Process(proc.pid)
        # just forked, it may not have exec'd yet (an empty or the parent's command line)
        wait_for(lambda: "time.sleep(30)" in " ".join(child.cmdline()), 10, "the sleeper's exec")
        yield child
    finally:
        proc.kill()
        proc.wait()


def _record_of(p: psutil.Process, backend: str = "qwen-7b") -> ChildRecord:
    return ChildRecord(
        backend=backend,
        pid=p.pid,
        pgid=os.getpgid(p.pid),
        create_time=p.create_time(),
        cmdline=p.cmdline(),
        port=8001,
        gpu_uuid="GPU-x",
        fraction=0.42,
        started_at="2026-01-01T00:00:00Z",
        spawn_marker=MARKER,
    )


def test_records_round_trip_and_are_replaced_atomically(tmp_path: Path, sleeper: psutil.Process) -> None:
    records = ChildRecords(tmp_path)
    a, b = _record_of(sleeper, "qwen-7b"), _record_of(sleeper, "deepseek-6.7b")
    records.put(a)
    records.put(b)
    assert records.load() == {"qwen-7b": a, "deepseek-6.7b": b}
    records.remove("qwen-7b")
    assert list(records.load()) == ["deepseek-6.7b"]
    assert json.loads((tmp_path / "children.json").read_text())["children"][0]["fraction"] == 0.42
    assert [p.name for p in tmp_path.iterdir()] == ["children.json"]  # no temp files left


def test_an_unreadable_records_file_is_treated_as_empty(tmp_path: Path) -> None:
    (tmp_path / "children.json").write_text("{not json")
    assert ChildRecords(tmp_path).load() == {}


def test_same_process_needs_pid_create_time_and_command_line(sleeper: psutil.Process) -> None:
    rec = _record_of(sleeper)
    assert is_same_process(rec)
    assert not is_same_process(replace(rec, create_time=rec.create_time - 100))
    assert not is_same_process(replace(rec, cmdline=[*rec.cmdline, "--port", "9"]))
    assert not_ours(replace(rec, spawn_marker="f" * 32)) == (
        "not ours: its environment lacks the recorded spawn marker")
    assert not_ours(replace(rec, spawn_marker="")) == (
        "not provably ours: the record has no spawn marker")
    assert not_ours(replace(rec, pgid=rec.pgid + 100000)) == (
        "not ours: its process group is not the recorded one")
    sleeper.kill()
    sleeper.wait(5)
    assert not is_same_process(rec)


def test_port_listener_pid_finds_the_owner_of_a_listening_socket() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert port_listener_pid(port) is None  # bound, not listening
        s.listen()
        assert port_listener_pid(port) == os.getpid()


def test_a_large_log_is_rotated_before_the_next_start(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    log.write_text("x" * 100)
    (tmp_path / "b.log.1").write_text("older")
    assert not rotate_before_start(log, max_bytes=1000, backups=2)
    assert rotate_before_start(log, max_bytes=50, backups=2)
    assert not log.exists()
    assert (tmp_path / "b.log.1").read_text() == "x" * 100
    assert (tmp_path / "b.log.2").read_text() == "older"


def test_a_live_log_is_copy_truncated_so_the_writer_keeps_appending(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, b"a" * 100 + b"\n")
        assert rotate_live(log, max_bytes=50, backups=1)
        os.write(fd, b"after rotation\n")
    finally:
        os.close(fd)
    assert log.read_text() == "after rotation\n"
    assert (tmp_path / "b.log.1").read_text() == "a" * 100 + "\n"


def test_last_error_prefers_the_error_line_over_later_noise(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    log.write_text(
        "INFO loading\nTraceback (most recent call last):\n  File x\n"
        "ValueError: Free memory on device cuda:0 (1.0/15.7 GiB) is less than desired\n"
        "INFO shutting down\n"
    )
    assert last_error(tail_lines(log)).startswith("ValueError: Free memory on device")


def test_records_written_from_many_threads_at_once_lose_none(tmp_path: Path) -> None:
    """Two keepers stopping together write the file from two worker threads: each change holds
    the file's lock, so none is lost (before: a put or remove could undo another's)."""
    import threading

    records = ChildRecords(tmp_path)
    names = [f"b{i}" for i in range(40)]
    start = threading.Barrier(len(names))

    def put(name: str) -> None:
        start.wait()
        records.put(ChildRecord(backend=name, pid=os.getpid(), pgid=os.getpid(),
                                create_time=1.0, cmdline=["x"], port=8000, gpu_uuid="GPU-x",
                                fraction=0.5))

    threads = [threading.Thread(target=put, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(records.load()) == set(names)
