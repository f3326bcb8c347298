"""Checks of the lifecycle policy keys (``pinned``, ``idle``, ``policy``) that need more than one
provider or gpumgr.yaml too (pure; no I/O). Each issue is located on the key that must change."""

from __future__ import annotations

import difflib

from gpumgr.config.registry import ProvidersFile
from gpumgr.config.settings import Settings
from gpumgr.config.source import YamlSource
from gpumgr.errors import ConfigIssue


def check_policies(pf: ProvidersFile, st: Settings | None, src: YamlSource) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    default_sleep = st is not None and st.vllm.swap_mode == "sleep"
    for name, p in pf.providers.items():
        if not p.runs_here:
            continue
        if p.policy == "demand":
            if p.pinned:
                issues.append(src.issue(("providers", name, "policy"), (
                    "policy: demand on a pinned provider: a pin is never swapped out by a "
                    "policy; remove 'pinned: true' or 'policy: demand'")))
            elif not p.is_vllm:
                issues.append(src.issue(("providers", name, "policy"),
                                        "policy: demand is for vLLM providers gpumgr runs"))
        idle = p.idle
        if idle is None:
            continue
        where = ("providers", name, "idle")
        if p.pinned:
            issues.append(src.issue(where, (
                "idle on a pinned provider: a pin is never stopped, put to sleep or swapped out "
                "by a policy; remove 'pinned: true' or 'idle'")))
            continue
        if not p.is_vllm:
            issues.append(src.issue(where, "idle is for vLLM providers gpumgr runs (it reads "
                                           "the engine's own request counters)"))
            continue
        sleeps = p.swap_mode == "sleep" or p.enable_sleep_mode or (
            p.swap_mode is None and default_sleep)
        if idle.action == "sleep" and not sleeps:
            issues.append(src.issue((*where, "action"), (
                "action 'sleep' needs vLLM sleep mode: set swap_mode: sleep on this provider")))
        target = idle.swap_to
        if idle.action != "swap" or target is None:
            continue
        at = (*where, "swap_to")
        other = pf.providers.get(target)
        if target == name:
            issues.append(src.issue(at, f"swap_to names {name} itself; name its default partner"))
        elif other is None:
            close = difflib.get_close_matches(target, sorted(pf.providers), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            issues.append(src.issue(at, f"unknown provider '{target}'{hint}"))
        elif not other.is_vllm or not other.runs_here:
            issues.append(src.issue(at, (
                f"'{target}' is not a vLLM provider gpumgr may run (type {other.type.value}, "
                f"status {other.status.value}): it cannot take {name}'s place")))
        elif other.gpu != p.gpu:
            issues.append(src.issue(at, (
                f"'{target}' runs on GPU {other.gpu} and {name} on GPU {p.gpu}: a swap back "
                "to a default shares one card")))
        elif other.pinned is False and other.idle is not None and other.idle.swap_to == name:
            issues.append(src.issue(at, (
                f"'{target}' swaps back to {name} when idle too: the two would take turns "
                "forever; keep the idle swap on one of them")))
    return issues
