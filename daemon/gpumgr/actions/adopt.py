"""What a starting daemon does with the children an earlier daemon recorded.

A record whose process is still the same one (pid + create time + command line + process group +
the spawn marker in its environment: ``records.not_ours``) is adopted if its backend is still
meant to run, and stopped if not (it is provably ours). A record whose process is gone, or whose
pid now belongs to someone else (a reused pid, or a forged ``children.json``), is forgotten:
that process is never signalled, a live one is reported (``adopt.not_ours``, a warning naming
the pid and why), and the backend is started afresh per desired state. If that process holds
the backend's port, the keeper publishes so as the backend's detail (``not started by
gpumgr``) and waits for the port.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gpumgr.supervisor import process
from gpumgr.supervisor.logs import log_path
from gpumgr.supervisor.records import ChildRecord, ChildRecords, not_ours

log = structlog.get_logger(__name__)


@dataclass
class Adoption:
    adopted: dict[str, process.ChildProcess] = field(default_factory=dict)
    """Backend → the recorded child, now watched (its health is checked by its keeper)."""
    records: dict[str, ChildRecord] = field(default_factory=dict)
    """Backend → the record of an adopted child (its GPU and slice)."""
    unwanted: list[tuple[process.ChildProcess, ChildRecord]] = field(default_factory=list)
    """Our children whose backend is no longer meant to run (with their records): to stop."""
    forgotten: list[ChildRecord] = field(default_factory=list)
    """Records of processes that are gone or not ours any more."""
    foreign: list[tuple[ChildRecord, str]] = field(default_factory=list)
    """Records whose pid is alive but not provably ours, with why: left alone (never signalled,
    not managed), reported."""


def _log_size(log_dir: Path, backend: str) -> int:
    try:
        return os.stat(log_path(log_dir, backend)).st_size
    except FileNotFoundError:
        return 0


async def adopt_recorded(
    records: ChildRecords, wanted: Collection[str], log_dir: Path
) -> Adoption:
    """Sort the recorded children into adopted / unwanted / forgotten (records updated). The
    file and process-table reads run off the event loop; the children are wrapped on it."""
    result = Adoption()
    for backend, rec in (await asyncio.to_thread(records.load)).items():
        why = await asyncio.to_thread(not_ours, rec)
        if why is not None:
            if why.startswith("gone"):
                log.info("adopt.gone", backend=backend, pid=rec.pid)
            else:
                log.warning("adopt.not_ours", backend=backend, pid=rec.pid, reason=why,
                            action="left alone, not managed")
                result.foreign.append((rec, why))
            await asyncio.to_thread(records.remove, backend)
            result.forgotten.append(rec)
            continue
        child = process.adopt(
            backend, rec.pid, rec.pgid, rec.create_time, rec.cmdline,
            await asyncio.to_thread(_log_size, log_dir, backend),
        )
        if backend in wanted:
            result.adopted[backend] = child
            result.records[backend] = rec
        else:
            log.info("adopt.unwanted", backend=backend, pid=rec.pid)
            result.unwanted.append((child, rec))
    return result
