"""The lifecycle policies under ``gpumgr status``'s table: per backend with one, the numbers
that drive it (docs/policies.md) and what it decided last."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import RenderableType
from rich.padding import Padding
from rich.text import Text


def _clock(iso: Any) -> str:
    """``2026-01-02T12:31:07Z`` → ``12:31:07`` (local time); the text as given otherwise."""
    if not isinstance(iso, str):
        return "?"
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return iso


def _describe(b: dict[str, Any]) -> list[str]:
    p = b.get("policy")
    if not isinstance(p, dict):
        return []
    out: list[str] = []
    if p.get("pinned"):
        out.append("pinned: no policy stops or swaps it out")
    if p.get("idle_after_s") is not None:
        line = f"idle: {p.get('idle_action')} after {p['idle_after_s']:g} s without requests"
        left = b.get("idle_action_in_s")
        if isinstance(left, (int, float)):
            line += f" (in {left:.0f} s)"
        out.append(line)
    if p.get("mode") == "demand":
        out.append(
            f"demand: {p.get('missed', 0)} missed vs {p.get('served', 0)} served in "
            f"{p.get('window_s', 0):g} s (needs a lead over {float(p.get('margin') or 0):.0%}); "
            f"min residency {p.get('min_residency_s', 0):g} s; swaps "
            f"{p.get('swaps_last_hour', 0)}/{p.get('max_swaps_per_hour', 0)} this hour"
            + (f"; next swap from {_clock(p['next_swap_at'])}" if p.get("next_swap_at") else ""))
        if p.get("reason"):
            out.append(f"last: {p.get('last_decision')} at {_clock(p.get('decided_at'))}: "
                       f"{p['reason']}")
    return out


def policy_lines(doc: dict[str, Any]) -> list[RenderableType]:
    """One heading, then per backend with a policy its name and its lines (wrapped lines stay
    indented); empty when no backend has one."""
    out: list[RenderableType] = []
    for b in doc.get("backends", []):
        described = _describe(b)
        if described:
            out.append(Text(f"  {b.get('name')}", no_wrap=True))
            out.extend(Padding(Text(line, overflow="fold"), (0, 0, 0, 4)) for line in described)
    return [Text("policies", style="bold"), *out] if out else []
