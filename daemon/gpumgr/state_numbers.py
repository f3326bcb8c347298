"""Numbers read back from the daemon's own state files, checked before they are used.

``json.loads`` accepts ``NaN``, ``Infinity`` and integers of any size; a state file edited by
hand, half-restored from a backup or written by a future version can hold any of them. One such
number used unchecked (``math.floor(inf)`` in every status flush) breaks far from the file it
came from, so each reader validates its numbers here and ignores, with a log line, what is out
of range. A leaf module: plain functions, no I/O.
"""

from __future__ import annotations

import math

PID_MAX = 1 << 22
"""The kernel's ceiling for ``/proc/sys/kernel/pid_max`` (4194304)."""


def number_in(value: object, low: float, high: float, *, low_open: bool = False) -> float | None:
    """``value`` as a float when it is a JSON number (not a bool), finite and within
    ``[low, high]`` (``(low, high]`` with ``low_open``); else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        return None
    if not math.isfinite(number) or number > high:
        return None
    if number < low or (low_open and number == low):
        return None
    return number


def int_in(value: object, low: int, high: int) -> int | None:
    """``value`` when it is a JSON integer (not a bool) within ``[low, high]``; else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def all_finite(value: object) -> bool:
    """True when no float anywhere in the JSON value ``value`` is NaN or infinite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(all_finite(v) for v in value)
    return True
