"""The backend manager in-process: the simulated engine (real processes), the simulated card and
hub, no daemon subprocess. Start, stop, reconcile, adoption by desired state, reload diffs.

Each test builds its configuration with the real loader (so identities come from real
``Provider`` values), drives one or two managers on one event loop, and always shuts them down.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gpumgr.actions.hang import HangWatcher
from gpumgr.actions.manager import BackendManager, ReconcileReport
from gpumgr.actions.operator import Operator
from gpumgr.actions.reconciler import Reconciler
from gpumgr.backend_state import BackendState as S
from gpumgr.config import Config, load_config
from gpumgr.daemon import _simulated_parts, open_inventory
from gpumgr.health.supervisor_events import apply_supervisor_event
from gpumgr.sim.gpu import SimGpuState
from gpumgr.supervisor import events as ev
from gpumgr.supervisor.system import System

from tests.helpers import alive, free_port
from state_fake import States

pytestmark = pytest.mark.slow

SETTINGS = """
health:
  starting_poll_s: 0.1
vllm:
  stop_timeout_s: 2
  start_timeout_s: 60
  memory_release_timeout_s: 5
restart:
  backoff_base_s: 0.1
  backoff_cap_s: 0.5
  max_crashes: 3
simulate:
  load_seconds: 0.2
"""


def provider_yaml(name: str, port: int, repo: str, *, status: str = "active",
                  max_model_len: int = 2048, description: str = "an engine",
                  host: str = "127.0.0.1") -> str:
    return f"""
  {name}:
    type: vllm
    description: {description}
    base_url: http://{host}:{port}
    status: {status}
    max_model_len: {max_model_len}
    max_num_seqs: 2
    models:
      - name: {name}-served
        hf_repo: {repo}
"""


QWEN = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
DEEPSEEK = "TheBloke/deepseek-coder-6.7B-instruct-AWQ"


class Rig:
    """One daemon's actions in-process: the manager, the reconciler every change goes through,
    the operator's commands and the hang watcher, as the daemon wires them."""

    def __init__(self, manager: BackendManager, health: Callable[[], object]) -> None:
        self.manager = manager
        self.reconciler = Reconciler(manager)
        self.operator = Operator(self.reconciler)
        self.hang = HangWatcher(self.reconciler, health)  # type: ignore[arg-type]
        self._inventory = manager._inventory
        self.keepers = manager.keepers

    async def begin(self, first_read: object) -> ReconcileReport:
        return await self.reconciler.boot(first_read)  # type: ignore[arg-type]

    async def start(self, name: str) -> None:
        await self.operator.start(name)

    async def stop(self, name: str) -> None:
        await self.operator.stop(name)

    async def reconcile(self, config: Config) -> ReconcileReport:
        async with self.reconciler.turn("reload"):
            return await self.reconciler.reload(config)

    def check_unresponsive(self, now: float) -> list[str]:
        return self.hang.check(now)

    async def shutdown(self) -> None:
        await self.reconciler.shutdown()


class Box:
    """A config directory, the simulated card, and the managers run on it."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.config_dir = tmp / "config"
        self.config_dir.mkdir()
        (self.config_dir / "gpumgr.yaml").write_text(SETTINGS)
        for name in ("runtime", "state", "log", "cache"):
            monkeypatch.setenv(f"GPUMGR_{name.upper()}_DIR", str(tmp / name))
        monkeypatch.setenv("GPUMGR_SIM_GPU_STATE", str(tmp / "runtime" / "sim-gpu.json"))
        monkeypatch.delenv("GPUMGR_SIM_LOAD_SECONDS", raising=False)
        self.monkeypatch = monkeypatch
        self.states = States()
        self.events: list[ev.SupervisorEvent] = []
        self.managers: list[Rig] = []
        self.generation = 0
        self.orphans: list[object] = []

    def write(self, *providers: str) -> Config:
        (self.config_dir / "providers.yaml").write_text("providers:" + "".join(providers))
        return load_config(self.config_dir, simulate=True)

    def sink(self, event: ev.SupervisorEvent) -> None:
        self.events.append(event)
        apply_supervisor_event(self.states, event)

    def manager(self, config: Config, system: System | None = None) -> Rig:
        inventory = open_inventory(config)
        generation = self.generation

        def sink(event: ev.SupervisorEvent) -> None:  # a dead daemon's late events reach nobody
            if generation == self.generation:
                self.sink(event)

        m = BackendManager(config, inventory, sink, health=lambda: self.states.healths(),
                           **({"system": system} if system else {}), **_simulated_parts(config))
        rig = Rig(m, lambda: self.states.healths())
        self.managers.append(rig)
        return rig

    def crash(self, manager: Rig) -> None:
        """The daemon dies: its keepers end, its engines do not; the next one starts afresh.
        The children's objects are kept (asyncio kills a child whose transport is collected;
        a real crash leaves it running)."""
        self.orphans.extend(k.child for k in manager.keepers.values() if k.child is not None)
        for keeper in manager.keepers.values():
            assert keeper._task is not None
            keeper._task.cancel()
        self.managers.remove(manager)
        assert self.states.illegal == []
        self.states = States()
        self.generation += 1

    def gpu(self) -> SimGpuState:
        return SimGpuState(self.tmp / "runtime" / "sim-gpu.json")

    def pid(self, manager: Rig, name: str) -> int:
        child = manager.keepers[name].child
        assert child is not None
        return child.pid

    async def until(self, predicate: Callable[[], object], what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; states: "
                                     f"{ {n: (h.state, h.reason) for n, h in self.states.health.items()} }")
            await asyncio.sleep(0.02)

    async def up(self, *names: str) -> None:
        await self.until(lambda: all(self.states.state(n) is S.UP for n in names), f"{names} up")

    def run(self, body: Callable[[], Awaitable[None]]) -> None:
        async def main() -> None:
            try:
                await body()
            finally:
                for m in self.managers:
                    await m.shutdown()
        asyncio.run(main())
        assert self.states.illegal == []


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Box]:
    b = Box(tmp_path, monkeypatch)
    yield b
    for alloc in b.gpu().read().allocations if b.gpu().path.exists() else ():
        try:  # last resort: an engine a failed test left behind
            os.killpg(alloc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_start_runs_only_the_active_providers_and_persists_what_should_run(box: Box) -> None:
    a, b = free_port(), free_port()
    config = box.write(provider_yaml("qwen", a, QWEN),
                       provider_yaml("deepseek", b, DEEPSEEK, status="standby"))

    async def body() -> None:
        m = box.manager(config)
        report = await m.begin(m._inventory.read())
        assert report.started == ["qwen"]
        await box.up("qwen")
        stored = json.loads((box.tmp / "state" / "desired.json").read_text())
        assert list(stored["backends"]) == ["qwen"]
        assert stored["registry_active"] == ["qwen"]
        assert stored["backends"]["qwen"]["identity"]["max_model_len"] == 2048
        assert "description" not in stored["backends"]["qwen"]["identity"]
        record = json.loads((box.tmp / "state" / "children.json").read_text())["children"][0]
        assert record["pid"] == box.pid(m, "qwen")
        assert record["extra"]["identity"] == stored["backends"]["qwen"]["identity"]
        assert box.states.state("deepseek") is S.STOPPED  # standby: not started

        await m.start("deepseek")
        await box.up("deepseek")
        assert set(json.loads((box.tmp / "state" / "desired.json").read_text())["backends"]) == {
            "qwen", "deepseek"}
        qwen_pid = box.pid(m, "qwen")
        await m.stop("deepseek")
        assert box.states.state("deepseek") is S.STOPPED
        assert "deepseek" not in json.loads((box.tmp / "state" / "desired.json").read_text())["backends"]
        assert box.pid(m, "qwen") == qwen_pid  # the other engine was not touched
        held = {x.pid for x in box.gpu().read().allocations}
        assert held == {qwen_pid}  # the stopped engine's memory is back

    box.run(body)
    assert box.gpu().read().allocations == ()  # shutdown stops everything


def test_a_reload_restarts_exactly_what_changed_and_a_description_edit_restarts_nothing(
    box: Box,
) -> None:
    a, b, c = free_port(), free_port(), free_port()
    v1 = box.write(provider_yaml("qwen", a, QWEN, description="first words"),
                   provider_yaml("deepseek", b, DEEPSEEK))

    async def body() -> None:
        m = box.manager(v1)
        await m.begin(m._inventory.read())
        await box.up("qwen", "deepseek")
        qwen_pid, deepseek_pid = box.pid(m, "qwen"), box.pid(m, "deepseek")

        # description edited, one provider removed, one added
        v2 = box.write(provider_yaml("qwen", a, QWEN, description="other words"),
                       provider_yaml("deepseek-b", c, DEEPSEEK))
        report = await m.reconcile(v2)
        assert (report.unchanged, report.stopped, report.started, report.restarted) == (
            ["qwen"], ["deepseek"], ["deepseek-b"], [])
        await box.up("qwen", "deepseek-b")
        assert box.pid(m, "qwen") == qwen_pid
        assert not alive(deepseek_pid)
        b_pid = box.pid(m, "deepseek-b")

        # one launch setting changed: only that engine restarts
        v3 = box.write(provider_yaml("qwen", a, QWEN, max_model_len=1024, description="other words"),
                       provider_yaml("deepseek-b", c, DEEPSEEK))
        report = await m.reconcile(v3)
        assert (report.restarted, report.unchanged) == (["qwen"], ["deepseek-b"])
        await box.up("qwen")
        assert box.pid(m, "qwen") != qwen_pid and not alive(qwen_pid)
        assert box.pid(m, "deepseek-b") == b_pid

    box.run(body)


def test_after_a_swap_and_a_daemon_crash_the_next_manager_adopts_the_swapped_in_engine(
    box: Box,
) -> None:
    """The file still says qwen is active; desired state says deepseek runs. The next daemon
    follows desired state: deepseek is adopted with the same pid, qwen is not started."""
    a, b = free_port(), free_port()
    config = box.write(provider_yaml("qwen", a, QWEN),
                       provider_yaml("deepseek", b, DEEPSEEK, status="standby"))

    async def body() -> None:
        first = box.manager(config)
        await first.begin(first._inventory.read())
        await box.up("qwen")
        await first.stop("qwen")
        await first.start("deepseek")
        await box.up("deepseek")
        pid = box.pid(first, "deepseek")
        # the daemon dies: its keepers end, its engines do not
        box.crash(first)

        second = box.manager(config)
        report = await second.begin(second._inventory.read())
        assert report.adopted == ["deepseek"] and report.started == []
        await box.up("deepseek")
        assert box.pid(second, "deepseek") == pid
        assert "qwen" not in second.keepers

    box.run(body)


def test_an_adopted_engine_whose_configuration_changed_meanwhile_is_restarted(box: Box) -> None:
    a = free_port()
    config = box.write(provider_yaml("qwen", a, QWEN))

    async def body() -> None:
        first = box.manager(config)
        await first.begin(first._inventory.read())
        await box.up("qwen")
        pid = box.pid(first, "qwen")
        box.crash(first)

        changed = box.write(provider_yaml("qwen", a, QWEN, max_model_len=1024))
        second = box.manager(changed)
        report = await second.begin(second._inventory.read())
        assert report.adopted == [] and report.restarted == ["qwen"]
        await box.up("qwen")
        assert box.pid(second, "qwen") != pid and not alive(pid)

    box.run(body)


class FullDisk(System):
    """``children.json`` cannot be written: the disk is full."""

    def write_atomic(self, path: Path, data: bytes) -> None:
        if path.name == "children.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write_atomic(path, data)


def test_a_record_that_cannot_be_written_fails_the_start_cleanly_instead_of_leaking_the_engine(
    box: Box,
) -> None:
    a = free_port()
    config = box.write(provider_yaml("qwen", a, QWEN))

    async def body() -> None:
        m = box.manager(config, FullDisk())
        await m.begin(m._inventory.read())
        await box.until(lambda: box.states.state("qwen") is S.FAILED, "failed", timeout_s=60)
        reason = box.states.reason("qwen")
        assert "No space left on device" in reason and "children.json" in reason
        spawned = [e.pid for e in box.events if isinstance(e, ev.ChildExited)]
        assert 0 not in spawned  # never an event for pid 0
        assert not any("not started by gpumgr" in getattr(e, "detail", "") for e in box.events)
        assert box.gpu().read().allocations == ()  # every engine it spawned is gone
        assert m.keepers["qwen"].child is None

    box.run(body)


def test_stop_while_restarting_or_failed_ends_stopped(box: Box) -> None:
    a = free_port()
    # a context of 10**6 tokens cannot fit: the plan fails, the backend is `failed`
    config = box.write(provider_yaml("qwen", a, QWEN, max_model_len=1_000_000))

    async def body() -> None:
        m = box.manager(config)
        await m.begin(m._inventory.read())
        await box.until(lambda: box.states.state("qwen") is S.FAILED, "failed")
        await m.stop("qwen")
        assert box.states.state("qwen") is S.STOPPED

    box.run(body)


def test_stop_while_waiting_to_restart_after_a_crash_ends_stopped(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    (box.config_dir / "gpumgr.yaml").write_text(SETTINGS.replace("backoff_base_s: 0.1", "backoff_base_s: 30")
                                                .replace("backoff_cap_s: 0.5", "backoff_cap_s: 60"))
    config = box.write(provider_yaml("qwen", free_port(), QWEN))
    monkeypatch.setenv("GPUMGR_SIM_CRASH_AFTER_S", "0.2")

    async def body() -> None:
        m = box.manager(config)
        await m.begin(m._inventory.read())
        await box.until(lambda: box.states.state("qwen") is S.RESTARTING, "restarting")
        assert "restart #1 in 30 s" in box.states.reason("qwen")
        await m.stop("qwen")
        assert box.states.state("qwen") is S.STOPPED
        assert box.states.health["qwen"].pid is None

    box.run(body)


def test_a_hung_engine_is_restarted_by_the_manager_after_the_configured_time(box: Box) -> None:
    a = free_port()
    settings = SETTINGS.replace("health:\n", "health:\n  restart_unresponsive_after_s: 0.3\n")
    (box.config_dir / "gpumgr.yaml").write_text(settings)
    config = box.write(provider_yaml("qwen", a, QWEN))

    async def body() -> None:
        m = box.manager(config)
        await m.begin(m._inventory.read())
        await box.up("qwen")
        pid = box.pid(m, "qwen")
        os.kill(pid, signal.SIGSTOP)  # hung: the process lives, nothing answers
        box.states.health["qwen"] = box.states.health["qwen"].__class__(
            "qwen", S.DOWN, time.time() - 1, "no answer", 3, pid, 0)  # what the probes would say
        assert m.check_unresponsive(time.time()) == ["qwen"]
        assert m.check_unresponsive(time.time()) == []  # one restart in flight, not two
        await box.until(lambda: box.states.state("qwen") is S.UP and box.pid(m, "qwen") != pid,
                        "a new engine")
        assert not alive(pid)
        assert box.states.health["qwen"].restarts == 1

    box.run(body)


@pytest.mark.parametrize("host", ["[::1]", "localhost"])
def test_an_engine_on_another_loopback_name_binds_there_and_comes_up(box: Box, host: str) -> None:
    """The engine binds the host its base_url names, and readiness looks there too: it does not
    sit in `starting` until the start timeout."""
    config = box.write(provider_yaml("qwen", free_port(), QWEN, host=host))

    async def body() -> None:
        m = box.manager(config)
        await m.begin(m._inventory.read())
        await box.up("qwen")
        argv = m.keepers["qwen"].spec.argv  # type: ignore[union-attr]
        assert argv[argv.index("--host") + 1] == ("::1" if host == "[::1]" else "127.0.0.1")

    box.run(body)

