"""A full disk under the state, runtime and log directories.

End to end, each directory is its own tiny tmpfs (``mount -t tmpfs -o size=…``, root only;
skipped elsewhere) filled to the last byte while the daemon runs, then freed. In process, a
``System`` whose writes of ``desired.json`` and ``startup.json`` fail with ENOSPC runs
everywhere. What is kept: engines already serving keep serving with their pids, the status API
keeps answering, nothing is leaked by a start that cannot be recorded, and everything catches up
once there is room again (a daemon killed afterwards adopts what runs).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port
from gpumgr.actions.manager import BackendManager
from gpumgr.backend_state import BackendState as S
from gpumgr.config import load_config
from gpumgr.daemon import _simulated_parts, open_inventory
from test_manager import Rig as Actions
from gpumgr.health.supervisor_events import apply_supervisor_event
from gpumgr.supervisor import events as ev
from gpumgr.supervisor.system import System
from reliability.rig import (
    DEEPSEEK, QWEN_7B, WAIT_S, Load, Rig, dead, group_gone, settings, vllm, wait_for,
    wait_new_pid_up,
)
from state_fake import States

pytestmark = pytest.mark.slow

FS_BYTES = 1024 * 1024
ENGINE, OTHER = "qwen-7b", "deepseek"


def _mount(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0755", "tmpfs",
                           str(path)], capture_output=True, timeout=30)  # fmt: skip
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _fill(directory: Path) -> Path:
    """Write a filler until the filesystem refuses every byte (ENOSPC); the filler's path."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def _rig(tmp: Path, dirs: dict[str, Path], settings_yaml: str = "") -> tuple[Rig, Load, list[Path]]:
    """A daemon whose ``dirs`` (state/runtime/log) are each a mounted tiny tmpfs (skips the
    test where mounting is not allowed)."""
    mounted: list[Path] = []
    for d in dirs.values():
        if not _mount(d):
            for m in mounted:
                _umount(m)
            pytest.skip("needs root and `mount -t tmpfs` to give a directory a full disk")
        mounted.append(d)
    p1, p2 = free_port(), free_port()
    env = {f"GPUMGR_{k.upper()}_DIR": str(v) for k, v in dirs.items()}
    r = Rig(tmp, vllm(ENGINE, p1, QWEN_7B, served="qwen", fraction=0.42)
            + vllm(OTHER, p2, DEEPSEEK, served="ds", fraction=0.45), settings_yaml or settings(),
            env=env)
    if "runtime" in dirs:
        r.daemon.runtime_dir = dirs["runtime"]  # status.json and the socket on the small disk
    return r, Load({OTHER: (p2, "ds")}), mounted


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, Load, dict[str, Path]]]:
    tmp = tmp_path_factory.mktemp("fault-disk")
    dirs = {"runtime": tmp / "runtime-fs", "log": tmp / "log-fs"}
    r, load, mounted = _rig(tmp, dirs)
    try:
        r.daemon.start()
        r.daemon.wait_up(ENGINE, WAIT_S)
        r.daemon.wait_up(OTHER, WAIT_S)
        load.start()
        yield r, load, dirs
        load.stop()
        # the bystander served every request while each disk was full
        assert load.results and [x for x in load.results if x[3] != "200"] == []
        assert r.daemon.stop() == 0
    finally:
        load.stop()
        r.close()
        for m in mounted:
            _umount(m)


def test_a_full_state_disk_fails_an_unrecordable_restart_cleanly_and_recovers(
    tmp_path: Path,
) -> None:
    dirs = {"state": tmp_path / "state-fs"}
    # each unrecordable start counts as a crash: a short crash loop ends it in `failed` soon
    r, _, mounted = _rig(tmp_path, dirs, settings().replace("max_crashes: 100", "max_crashes: 3"))
    d = r.daemon
    try:
        d.start()
        pid = int(d.wait_up(ENGINE, WAIT_S)["pid"])
        other = int(d.wait_up(OTHER, WAIT_S)["pid"])
        filler = _fill(dirs["state"])
        try:
            os.kill(pid, signal.SIGKILL)  # a crash now needs a new record: there is no room
            failed = d.wait_backend(ENGINE, lambda b: b["state"] == "failed", WAIT_S,
                                    "the unrecordable restart failed")  # fmt: skip
            assert "No space left on device" in failed["detail"], failed
            assert "internal error" not in failed["detail"]
            assert "keeper.crashed" not in d.log_text()
            spawned = {e["pid"] for e in r.engine_events()} - {pid, other}
            wait_for(lambda: all(dead(p) and group_gone(p) for p in spawned), 10,
                     "every engine spawned without a record gone")  # fmt: skip
            assert set(r.allocations()) == {other}  # nothing holds memory unrecorded
            assert r.pid_of(OTHER) == other and d.backend(OTHER)["available"]
        finally:
            filler.unlink()
        status, lines = r.control("start", {"name": ENGINE})
        assert status == 200 and lines[-1]["ok"], lines
        new = int(d.wait_up(ENGINE, WAIT_S)["pid"])
        records = json.loads((dirs["state"] / "children.json").read_text())["children"]
        assert {c["backend"]: c["pid"] for c in records} == {ENGINE: new, OTHER: other}
        # the state on disk is whole again: a killed daemon's successor adopts both engines
        assert d.proc is not None
        d.proc.kill()
        d.proc.wait()
        d.start()
        wait_for(lambda: d.status()["adoption_done"] and r.pid_of(ENGINE) == new
                 and d.backend(ENGINE)["state"] == "up", WAIT_S, "adopted after the outage")  # fmt: skip
        assert r.pid_of(OTHER) == other
    finally:
        r.close()
        for m in mounted:
            _umount(m)


def test_a_full_runtime_disk_keeps_the_api_current_and_status_json_catches_up(
    full: tuple[Rig, Load, dict[str, Path]],
) -> None:
    r, _, dirs = full
    d = r.daemon
    d.wait_up(ENGINE, WAIT_S)
    other = r.pid_of(OTHER)
    pid = r.pid_of(ENGINE)
    filler = _fill(dirs["runtime"])
    try:
        os.kill(pid, signal.SIGKILL)
        new = wait_new_pid_up(r, ENGINE, pid)  # the API follows
        wait_for(lambda: "status.file_write_failed" in d.log_text(), 10, "the failed write logged")
        stale = d.status_file()
        assert stale is not None and d.backend(ENGINE, stale)["pid"] != new  # the file is stuck
        assert not list(dirs["runtime"].glob(".status.json.*"))  # no half-written leftovers
        assert r.control("logs", None)[0] in (404, 405, 422)  # the socket still answers
    finally:
        filler.unlink()
    # the next change writes it again, whole and current
    status, lines = r.control("restart", {"name": ENGINE})
    assert status == 200 and lines[-1]["ok"], lines
    final = r.pid_of(ENGINE)
    wait_for(lambda: (d.status_file() or {}).get("seq") == d.status()["seq"]
             and d.backend(ENGINE, d.status_file())["pid"] == final, 10,
             "status.json current again")  # fmt: skip
    assert d.log_text().count("status.file_write_failed") == 1  # one line per outage
    assert "status.file_write_recovered" in d.log_text()
    assert r.pid_of(OTHER) == other


def test_a_full_log_disk_does_not_touch_serving_engines_and_a_restart_recovers(
    full: tuple[Rig, Load, dict[str, Path]],
) -> None:
    r, _, dirs = full
    d = r.daemon
    d.wait_up(ENGINE, WAIT_S)
    other = r.pid_of(OTHER)
    pid = r.pid_of(ENGINE)
    filler = _fill(dirs["log"])
    try:
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # its successor cannot write a line of its log
        d.wait_backend(ENGINE, lambda b: b["pid"] != pid, WAIT_S, "the crash noticed")
        assert r.pid_of(OTHER) == other and d.backend(OTHER)["available"]
        assert d.get("/v1/status").status_code == 200
        took = time.monotonic() - t0
        assert took < WAIT_S
    finally:
        filler.unlink()
    back = d.wait_up(ENGINE, WAIT_S)
    wait_for(lambda: set(r.allocations()) == {int(back["pid"]), other}, 10,
             "only the two serving engines holding memory")  # fmt: skip
    assert r.pid_of(OTHER) == other


class FullStateWrites(System):
    """``desired.json`` and ``startup.json`` cannot be written: the disk is full."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    def write_atomic(self, path: Path, data: bytes) -> None:
        if path.name in ("desired.json", "startup.json"):
            self.refused.append(path.name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write_atomic(path, data)


def test_in_process_full_desired_and_startup_files_are_logged_and_the_engines_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Runs without root: the manager with a ``System`` that refuses two of its three files."""
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "gpumgr.yaml").write_text(settings())
    for name in ("runtime", "state", "log", "cache"):
        monkeypatch.setenv(f"GPUMGR_{name.upper()}_DIR", str(tmp_path / name))
    monkeypatch.setenv("GPUMGR_SIM_GPU_STATE", str(tmp_path / "runtime" / "sim-gpu.json"))
    (config_dir / "providers.yaml").write_text(
        "providers:" + vllm("a", free_port(), DEEPSEEK, fraction=0.42)
        + vllm("b", free_port(), DEEPSEEK, status="standby", fraction=0.45))
    config = load_config(config_dir, simulate=True)
    states = States()
    system = FullStateWrites()

    def sink(event: ev.SupervisorEvent) -> None:
        apply_supervisor_event(states, event)

    async def until(pred: object, what: str) -> None:
        deadline = time.monotonic() + 30
        while not pred():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async def body() -> None:
        m = Actions(BackendManager(config, open_inventory(config), sink, health=states.healths,
                               system=system, **_simulated_parts(config)), states.healths)
        try:
            await m.begin(m._inventory.read())
            await until(lambda: states.state("a") is S.UP, "a up")
            a_pid = m.keepers["a"].child.pid  # type: ignore[union-attr]
            await m.start("b")
            await until(lambda: states.state("b") is S.UP, "b up")
            await m.stop("b")
            assert states.state("b") is S.STOPPED
            assert m.keepers["a"].child.pid == a_pid  # type: ignore[union-attr]
            assert "desired.json" in system.refused and "startup.json" in system.refused
            assert not (tmp_path / "state" / "desired.json").exists()
            records = json.loads((tmp_path / "state" / "children.json").read_text())
            assert [c["backend"] for c in records["children"]] == ["a"]
        finally:
            await m.shutdown()

    asyncio.run(body())
    assert states.illegal == []
