"""Child records: what the supervisor started, kept in ``<state_dir>/children.json``.

A daemon that dies leaves its children serving; the next one reads these records and adopts a
child only if it is provably the same process (pid + create time + command line). The file is
replaced atomically so that a crash mid-write never leaves half a record.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import psutil
import structlog

log = structlog.get_logger(__name__)

RECORDS_FILE = "children.json"
_CREATE_TIME_TOLERANCE_S = 0.5  # psutil derives create_time from boot time + jiffies


@dataclass(frozen=True)
class ChildRecord:
    backend: str
    pid: int
    pgid: int
    create_time: float
    cmdline: list[str]
    port: int | None = None
    gpu_uuid: str | None = None
    fraction: float | None = None
    started_at: str = ""
    """RFC 3339 UTC time of the spawn."""
    extra: dict[str, Any] = field(default_factory=dict)


class ChildRecords:
    """The records file. One writer (the supervisor of this daemon); reads are cheap."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / RECORDS_FILE

    def load(self) -> dict[str, ChildRecord]:
        """Records by backend; an unreadable file is logged and treated as empty (never fatal)."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            items = raw.get("children", []) if isinstance(raw, dict) else []
            known = {f.name for f in fields(ChildRecord)}
            records = [ChildRecord(**{k: v for k, v in i.items() if k in known}) for i in items]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:
            log.warning("supervisor.records_unreadable", path=str(self.path), error=str(exc))
            return {}
        return {r.backend: r for r in records}

    def _store(self, records: dict[str, ChildRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "children": [asdict(r) for r in records.values()]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".children-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(self, record: ChildRecord) -> None:
        records = self.load()
        records[record.backend] = record
        self._store(records)

    def remove(self, backend: str) -> None:
        records = self.load()
        if records.pop(backend, None) is not None:
            self._store(records)


def is_same_process(record: ChildRecord) -> bool:
    """True when ``record.pid`` is still the process gpumgr started: same create time and
    command line, not a zombie. A reused pid fails the create-time check."""
    try:
        proc = psutil.Process(record.pid)
        with proc.oneshot():
            if abs(proc.create_time() - record.create_time) > _CREATE_TIME_TOLERANCE_S:
                return False
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            if os.getpgid(record.pid) != record.pgid:
                return False  # the group gpumgr would signal is not the one it started
            return list(proc.cmdline()) == list(record.cmdline)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ProcessLookupError):
        return False


def port_listener_pid(port: int) -> int | None:
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
