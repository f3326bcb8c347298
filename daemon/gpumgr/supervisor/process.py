"""Child processes: spawn one in its own session, notice its exit at once, stop its whole group.

Only this module sends signals, and only to process groups that gpumgr created: a spawned child
is its own session leader (pgid == pid) and an adopted one was checked against its record (pid +
create time + command line + process group + the spawn marker in its environment) before it is
wrapped here. A group id cannot be reused by the kernel
while any member lives, so signalling the group of a dead leader still reaches only its orphans.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import structlog

from gpumgr.sd_notify import child_environment
from gpumgr.supervisor.logs import open_for_child
from gpumgr.supervisor.system import REAL, System

log = structlog.get_logger(__name__)

SPAWN_MARKER_ENV = "GPUMGR_SPAWN_MARKER"
"""Set to a fresh random token in every engine's environment at spawn and stored in its record:
a later daemon adopts (and may signal) a recorded pid only if ``/proc/<pid>/environ`` carries
the same token, which a process gpumgr did not start cannot have (``records.not_ours``)."""

_GROUP_POLL_S = 0.05
_MEMORY_POLL_S = 0.1
_KILL_GRACE_S = 5.0


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids of process group ``pgid`` (``System.group_members``)."""
    return REAL.group_members(pgid)


class ChildProcess:
    """One engine process, spawned here or adopted from a record. ``wait()`` resolves the moment
    the leader exits: asyncio's child watcher for our own children, a pidfd for adopted ones
    (they are not our children, so ``waitpid`` cannot see them)."""

    def __init__(
        self,
        backend: str,
        pid: int,
        pgid: int,
        create_time: float,
        cmdline: list[str],
        *,
        adopted: bool,
        log_offset: int = 0,
        system: System = REAL,
    ) -> None:
        self.backend = backend
        self.pid = pid
        self.pgid = pgid
        self.create_time = create_time
        self.cmdline = cmdline
        self.adopted = adopted
        self.spawn_marker: str | None = None
        """The ``GPUMGR_SPAWN_MARKER`` token this daemon gave the child (None when adopted)."""
        self.log_offset = log_offset
        """Size of the log when this child started: its own lines come after it."""
        self.system = system
        self.returncode: int | None = None
        self.exited_at_s: float | None = None
        self._exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._watch_task: asyncio.Task[None] | None = None

    # -- exit detection --------------------------------------------------------------------
    def _set_exited(self, returncode: int | None) -> None:
        if not self._exited.done():
            self.returncode = returncode
            self.exited_at_s = time.monotonic()
            self._exited.set_result(returncode)
            log.info("supervisor.exit", backend=self.backend, pid=self.pid, returncode=returncode)

    @property
    def exited(self) -> bool:
        return self._exited.done()

    async def wait(self) -> int | None:
        """The leader's exit status (None for an adopted child: init reaps it, not us)."""
        return await asyncio.shield(self._exited)

    def _watch_spawned(self, proc: asyncio.subprocess.Process) -> None:
        async def watch() -> None:
            self._set_exited(await proc.wait())

        self._watch_task = asyncio.get_running_loop().create_task(watch())

    def _watch_adopted(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._set_exited(None)
            return
        except (AttributeError, OSError):  # no pidfd: a thread blocked in psutil's wait
            self._watch_task = loop.create_task(self._psutil_wait())
            return

        def readable() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._set_exited(None)

        loop.add_reader(fd, readable)

    async def _psutil_wait(self) -> None:
        def blocking_wait() -> None:
            try:
                psutil.Process(self.pid).wait()
            except psutil.NoSuchProcess:
                pass

        await asyncio.to_thread(blocking_wait)
        self._set_exited(None)

    # -- signals ---------------------------------------------------------------------------
    def signal_group(self, sig: signal.Signals) -> bool:
        """Send ``sig`` to the child's process group. False when the group is gone."""
        try:
            self.system.killpg(self.pgid, sig)
        except ProcessLookupError:
            return False
        log.info("supervisor.signal", backend=self.backend, pgid=self.pgid, signal=sig.name)
        return True

    def group_alive(self) -> bool:
        """Blocking when the leader exited (walks the process table): see ``group_alive_async``."""
        if not self.exited:
            return True
        return bool(self.system.group_members(self.pgid))

    async def group_alive_async(self) -> bool:
        """``group_alive`` with the process-table walk off the event loop."""
        if not self.exited:
            return True
        return bool(await asyncio.to_thread(self.system.group_members, self.pgid))


async def spawn(
    backend: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    log_file: Path,
    system: System = REAL,
) -> ChildProcess:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log_file``.

    The child inherits the log descriptor directly (no pipe through the daemon), has no stdin,
    and keeps running if the daemon dies. Raises ``OSError`` when the executable cannot run.
    """
    marker = secrets.token_hex(16)
    fd = open_for_child(log_file)
    try:
        offset = os.fstat(fd).st_size
        proc = await system.spawn(argv, {**child_environment(env), SPAWN_MARKER_ENV: marker}, fd)
    finally:
        os.close(fd)
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:  # already gone: keep going, the watcher reports the exit
        create_time = time.time()
    child = ChildProcess(
        backend, proc.pid, proc.pid, create_time, list(argv), adopted=False, log_offset=offset,
        system=system,
    )
    child.spawn_marker = marker
    child._watch_spawned(proc)
    log.info("supervisor.spawn", backend=backend, pid=proc.pid, log=str(log_file))
    return child


def adopt(
    backend: str, pid: int, pgid: int, create_time: float, cmdline: list[str], log_offset: int = 0
) -> ChildProcess:
    """Wrap a child started by an earlier daemon. The caller has checked it is the same process
    (``records.is_same_process``); from here on its exit is watched through a pidfd."""
    child = ChildProcess(
        backend, pid, pgid, create_time, cmdline, adopted=True, log_offset=log_offset
    )
    child._watch_adopted()
    log.info("supervisor.adopt", backend=backend, pid=pid)
    return child


@dataclass(frozen=True)
class StopOutcome:
    killed: bool
    """SIGKILL was needed (SIGTERM was ignored past the timeout)."""
    group_gone: bool
    memory_released: bool
    stop_s: float


MemoryReleased = Callable[[frozenset[int]], Awaitable[bool]]
"""Asked with the pids of the stopped group: does the GPU no longer show memory for any of them?"""


async def _wait_group_gone(child: ChildProcess, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    if not child.exited:
        try:
            await asyncio.wait_for(child.wait(), timeout=timeout_s)
        except asyncio.TimeoutError:
            return False
    while await asyncio.to_thread(child.system.group_members, child.pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_GROUP_POLL_S)
    return True


async def stop(
    child: ChildProcess,
    *,
    term_timeout_s: float,
    memory_released: MemoryReleased | None = None,
    memory_timeout_s: float = 30.0,
) -> StopOutcome:
    """SIGTERM to the group, SIGKILL after ``term_timeout_s``, then wait (bounded) until the GPU
    shows the memory back. Stopping a child that already exited still clears its orphans."""
    started = time.monotonic()
    pids = frozenset({child.pid, *await asyncio.to_thread(child.system.group_members, child.pgid)})
    killed = False
    if await child.group_alive_async():
        child.signal_group(signal.SIGTERM)
        child.signal_group(signal.SIGCONT)  # a stopped (hung, SIGSTOPped) group must see the TERM
        if not await _wait_group_gone(child, term_timeout_s):
            killed = child.signal_group(signal.SIGKILL)
            log.warning("supervisor.sigkill", backend=child.backend, pgid=child.pgid)
            await _wait_group_gone(child, _KILL_GRACE_S)
    group_gone = not await child.group_alive_async()
    released = True
    if memory_released is not None:
        released = False
        deadline = time.monotonic() + memory_timeout_s
        while True:
            if await memory_released(pids):
                released = True
                break
            if time.monotonic() >= deadline:
                log.warning("supervisor.memory_not_released", backend=child.backend)
                break
            await asyncio.sleep(_MEMORY_POLL_S)
    outcome = StopOutcome(killed, group_gone, released, time.monotonic() - started)
    log.info(
        "supervisor.stopped",
        backend=child.backend,
        pid=child.pid,
        killed=killed,
        group_gone=group_gone,
        memory_released=released,
        stop_s=round(outcome.stop_s, 3),
    )
    return outcome
