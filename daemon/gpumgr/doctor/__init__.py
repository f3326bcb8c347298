"""``gpumgr doctor``: what is wrong with this box, each finding with the fix to try.

The checks are pure functions over facts (``checks_host``, ``checks_services``): they take what
was read (an inventory, a port's listener, an HTTP status, a file's text) and return ``Check``
values, so tests feed them recorded values. ``runner`` reads the facts (NVML, psutil, HTTP,
``systemctl``, the files) with short timeouts and calls them. Nothing here changes the box.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    """One finding: ``name`` is a stable dotted key (``gpu.driver``, ``port.8001``…)."""

    name: str
    level: Level
    summary: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.level.value, "summary": self.summary,
                "fix": self.fix}


def ok(name: str, summary: str) -> Check:
    return Check(name, Level.OK, summary)


def warn(name: str, summary: str, fix: str = "") -> Check:
    return Check(name, Level.WARN, summary, fix)


def fail(name: str, summary: str, fix: str) -> Check:
    return Check(name, Level.FAIL, summary, fix)


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]
    duration_s: float = 0.0

    def count(self, level: Level) -> int:
        return sum(1 for c in self.checks if c.level is level)

    @property
    def failed(self) -> bool:
        return self.count(Level.FAIL) > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "counts": {lv.value: self.count(lv) for lv in Level},
            "duration_s": round(self.duration_s, 3),
            "checks": [c.to_dict() for c in self.checks],
        }


__all__ = ["Check", "Level", "Report", "fail", "ok", "warn"]
