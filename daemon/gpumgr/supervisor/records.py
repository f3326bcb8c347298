"""Child records: what the supervisor started, kept in ``<state_dir>/children.json``.

A daemon that dies leaves its children serving; the next one reads these records and adopts a
child only if it is provably the same process: pid, create time, command line, process group,
and the random ``GPUMGR_SPAWN_MARKER`` token set in its environment at spawn (stored here). The
first four can be read from /proc for any process, so a forged record could copy them; the
marker is in no process gpumgr did not start, and another user's environment is unreadable. The file is
replaced atomically so that a crash mid-write never leaves half a record.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import psutil
import structlog

from gpumgr.state_numbers import PID_MAX, all_finite, int_in, number_in
from gpumgr.supervisor.process import SPAWN_MARKER_ENV
from gpumgr.supervisor.system import REAL, System

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
    spawn_marker: str = ""
    """The ``GPUMGR_SPAWN_MARKER`` value given to the child at spawn ("" in an older record,
    which therefore proves nothing)."""


class ChildRecords:
    """The records file. One writer (the supervisor of this daemon); reads are cheap. Writes
    come from worker threads (``asyncio.to_thread``), two keepers at once when two engines stop
    together: each read-change-write holds one lock, so neither undoes the other's change."""

    def __init__(self, state_dir: Path, system: System = REAL) -> None:
        self.path = state_dir / RECORDS_FILE
        self._system = system
        self._writing = threading.Lock()

    def load(self) -> dict[str, ChildRecord]:
        """Records by backend. An unreadable file is logged and treated as empty, a record of
        the wrong shape is logged and skipped, one by one: never fatal (a daemon that exits
        on a bad file would be restart-looped by systemd)."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("supervisor.records_unreadable", path=str(self.path), error=str(exc))
            return {}
        items = raw.get("children", []) if isinstance(raw, dict) else None
        if not isinstance(items, list):
            log.warning("supervisor.records_unreadable", path=str(self.path),
                        error="expected {\"children\": [...]}")
            return {}
        records: dict[str, ChildRecord] = {}
        for index, item in enumerate(items):
            record = _parse_record(item)
            if record is None:
                log.warning("supervisor.record_ignored", path=str(self.path), index=index,
                            record=repr(item)[:200])
                continue
            records[record.backend] = record
        return records

    def _store(self, records: dict[str, ChildRecord]) -> None:
        data = {"version": 1, "children": [asdict(r) for r in records.values()]}
        self._system.write_atomic(self.path, json.dumps(data, indent=2).encode())

    def put(self, record: ChildRecord) -> None:
        with self._writing:
            records = self.load()
            records[record.backend] = record
            self._store(records)

    def remove(self, backend: str) -> None:
        """Forget ``backend``'s record. A write that fails (disk full, read-only) is logged, not
        raised: a stale record is harmless (the next daemon finds its pid gone or reused and
        forgets it), while an exception here would end the caller's stop or restart half-way."""
        with self._writing:
            records = self.load()
            if records.pop(backend, None) is None:
                return
            try:
                self._store(records)
            except OSError as exc:
                log.error("supervisor.record_remove_failed", backend=backend, path=str(self.path),
                          error=str(exc))


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "backend": (str,),
    "pid": (int,),
    "pgid": (int,),
    "create_time": (int, float),
    "cmdline": (list,),
    "port": (int, type(None)),
    "gpu_uuid": (str, type(None)),
    "fraction": (int, float, type(None)),
    "started_at": (str,),
    "extra": (dict,),
    "spawn_marker": (str,),
}
_REQUIRED = ("backend", "pid", "pgid", "create_time", "cmdline")


def _parse_record(item: object) -> ChildRecord | None:
    """One record, or None when it is not the shape gpumgr writes (types, positive pids)."""
    if not isinstance(item, dict) or any(k not in item for k in _REQUIRED):
        return None
    known = {f.name for f in fields(ChildRecord)}
    values = {k: v for k, v in item.items() if k in known}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, _FIELD_TYPES[key]):
            return None
    if not values["backend"] or not _numbers_in_range(values):
        return None
    if not all(isinstance(a, str) for a in values["cmdline"]):
        return None
    return ChildRecord(**values)


def _numbers_in_range(values: dict[str, Any]) -> bool:
    """pids within the kernel's range, a finite positive create time, a TCP port, a fraction
    of a card (``gpumgr.state_numbers``); anything else makes the record not gpumgr's."""
    if int_in(values["pid"], 1, PID_MAX) is None or int_in(values["pgid"], 1, PID_MAX) is None:
        return False
    if number_in(values["create_time"], 0.0, 1e12, low_open=True) is None:
        return False
    port, fraction = values.get("port"), values.get("fraction")
    if port is not None and int_in(port, 1, 65535) is None:
        return False
    if fraction is not None and number_in(fraction, 0.0, 1.0, low_open=True) is None:
        return False
    return all_finite(values.get("extra", {}))


def is_same_process(record: ChildRecord) -> bool:
    """True when ``record.pid`` is still the process gpumgr started (``not_ours`` is None)."""
    return not_ours(record) is None


def not_ours(record: ChildRecord) -> str | None:
    """Why ``record.pid`` is not (provably) the process gpumgr started, or None when it is: same
    create time, command line and process group, not a zombie, and the record's spawn marker in
    its environment. A reused pid fails the create-time check; a forged record fails the marker
    (or cannot read the environment of another user's process)."""
    try:
        proc = psutil.Process(record.pid)
        with proc.oneshot():
            if abs(proc.create_time() - record.create_time) > _CREATE_TIME_TOLERANCE_S:
                return "gone (the pid now belongs to a newer process)"
            if proc.status() == psutil.STATUS_ZOMBIE:
                return "gone (a zombie)"
            if os.getpgid(record.pid) != record.pgid:
                return "not ours: its process group is not the recorded one"
            if list(proc.cmdline()) != list(record.cmdline):
                return "not ours: its command line is not the recorded one"
            if not record.spawn_marker:
                return "not provably ours: the record has no spawn marker"
            if proc.environ().get(SPAWN_MARKER_ENV) != record.spawn_marker:
                return "not ours: its environment lacks the recorded spawn marker"
            return None
    except psutil.AccessDenied:
        return "not ours: its environment cannot be read (another user's process)"
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ProcessLookupError):
        return "gone"


def port_listener_pid(port: int) -> int | None:
    """The pid listening on TCP ``port`` (``System.port_listener_pid``)."""
    return REAL.port_listener_pid(port)
