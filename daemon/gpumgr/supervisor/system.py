"""Every operating-system call the supervisor makes, behind one small object.

Spawning, signalling, walking the process table, asking who listens on a port and writing the
state files all go through ``System``. The daemon uses the real one (``REAL``); the fault suite
passes a subclass that fails on purpose (a full disk on ``children.json``, a spawn that cannot
exec) to prove that a failure leaves nothing behind. Like supervisor's ``options`` object, it is
the seam tests replace, so production code never asks whether it runs under a test.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from gpumgr import fsio


class System:
    """The real operating system. Subclass and override to inject failures."""

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log_fd: int
    ) -> asyncio.subprocess.Process:
        """Start ``argv`` in a new session, stdout+stderr on ``log_fd``, no stdin."""
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )

    def killpg(self, pgid: int, sig: signal.Signals) -> None:
        os.killpg(pgid, sig)

    def group_members(self, pgid: int) -> list[int]:
        """Live (non-zombie) pids whose process group is ``pgid``.

        A group that no longer exists answers at once (``killpg(pgid, 0)``); only a group that
        still has members, live or zombie, costs a walk of the process table.
        """
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass  # it exists; whose it is, the walk below tells
        members: list[int] = []
        for proc in psutil.process_iter(["status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if os.getpgid(proc.pid) == pgid:
                    members.append(proc.pid)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        return members

    def port_listener_pid(self, port: int) -> int | None:
        """The pid listening on TCP ``port`` (any address); None when nobody listens, 0 when a
        listener exists but its owner is hidden from this user."""
        try:
            conns = psutil.net_connections(kind="tcp")
        except psutil.AccessDenied:
            return None
        for c in conns:
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                return c.pid if c.pid is not None else 0
        return None

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, never
        half of one (``gpumgr.fsio.write_atomic``; the state files are the daemon's own: 0600).
        Raises ``OSError`` (disk full, read-only). The seam the fault suite overrides."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fsio.write_atomic(path, data, mode=0o600)


REAL = System()
