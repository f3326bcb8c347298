"""Why a plan does not fit, and the nearest fix. Pure.

Fixes are listed least disruptive first: shorten the failing provider's ``max_model_len``
(everything keeps running), unload Ollama models (they reload on demand), stop a running
backend outside the set, plan without one provider of the set, lower another's pinned fraction.
Only fixes that close the whole shortfall on their own are offered.
"""

from __future__ import annotations

from gpumgr.plan.model import (
    HUNDREDTHS,
    InstanceRequest,
    OllamaModel,
    PlanRequest,
    Shortfall,
    budget_bytes_for,
    hundredths_budget,
    max_hundredths,
    mib,
    min_hundredths,
)

MIN_USEFUL_MAX_MODEL_LEN = 1024
"""A context shorter than this is no fix for a coding assistant: not offered."""


def explain_pin_too_small(r: InstanceRequest, total_bytes: int) -> Shortfall:
    """A pinned fraction that cannot hold the weights plus one full-length sequence."""
    assert r.pinned_fraction is not None
    est = r.estimate
    budget = budget_bytes_for(total_bytes, r.pinned_fraction)
    need_h = min_hundredths(total_bytes, est.min_budget_bytes)
    fixes: list[str] = []
    if need_h <= HUNDREDTHS:
        fixes.append(f"raise gpu_memory_utilization of {r.provider} to {need_h / HUNDREDTHS:.2f}")
    longest = est.largest_max_model_len(budget)
    if MIN_USEFUL_MAX_MODEL_LEN <= longest < est.max_model_len:
        fixes.append(f"set max_model_len of {r.provider} to {longest} (from {est.max_model_len})")
    return Shortfall(
        provider=r.provider,
        shortfall_bytes=est.min_budget_bytes - budget,
        reason=(
            f"pinned gpu_memory_utilization {r.pinned_fraction} gives {budget // (1 << 20)} MiB; "
            f"weights, overhead and one {est.max_model_len}-token sequence need "
            f"{mib(est.min_budget_bytes)} MiB"
        ),
        fixes=tuple(fixes),
    )


def explain_shortfall(
    request: PlanRequest, order: list[InstanceRequest], budgets: dict[str, int], need_bytes: int
) -> Shortfall:
    """The set's minimum footprint exceeds what is available: name the first provider in start
    order that no longer fits, the shortfall of the whole set, and the fixes."""
    total = request.total_bytes
    available = request.available_bytes
    shortfall = need_bytes - available
    failing = order[-1]
    cum = 0
    for r in order:
        cum += r.estimate.context_bytes + budgets[r.provider]
        if cum > available:
            failing = r
            break
    est = failing.estimate
    if failing.pinned_fraction is None and est.min_budget_bytes > total:
        reason = (
            f"needs {mib(est.min_budget_bytes)} MiB for weights, overhead and one "
            f"{est.max_model_len}-token sequence, more than the card's {total // (1 << 20)} MiB"
        )
    else:
        reason = (
            f"the set needs {mib(need_bytes)} MiB (CUDA contexts + minimum budgets), "
            f"{max(0, available) // (1 << 20)} MiB are free after the reserve"
            + (
                f" and {mib(request.ollama_extra_bytes)} MiB kept for Ollama"
                if request.ollama_extra_bytes
                else ""
            )
        )
    fixes = [
        *_shorter_context(request, order, budgets, failing),
        *_unload_ollama(request, shortfall),
        *_stop_other(request, shortfall),
        *_drop_from_set(order, budgets, shortfall),
        *_lower_pins(request, order, budgets, shortfall),
    ]
    return Shortfall(
        provider=failing.provider, shortfall_bytes=shortfall, reason=reason, fixes=tuple(fixes)
    )


def _shorter_context(
    request: PlanRequest,
    order: list[InstanceRequest],
    budgets: dict[str, int],
    failing: InstanceRequest,
) -> list[str]:
    """The largest ``max_model_len`` at which the failing (unpinned) provider would fit."""
    if failing.pinned_fraction is not None:
        return []
    others = sum(
        r.estimate.context_bytes + budgets[r.provider] for r in order if r is not failing
    )
    room = request.available_bytes - others - failing.estimate.context_bytes
    h = max_hundredths(request.total_bytes, room)
    if h <= 0:
        return []
    est = failing.estimate
    longest = est.largest_max_model_len(hundredths_budget(request.total_bytes, h))
    if MIN_USEFUL_MAX_MODEL_LEN <= longest < est.max_model_len:
        return [
            f"set max_model_len of {failing.provider} to {longest} (from {est.max_model_len})"
        ]
    return []


def _ollama_gain(request: PlanRequest, unload: list[OllamaModel]) -> int:
    """Memory gained by unloading ``unload``: Ollama's hold is max(resident, reservation)."""
    held = request.ollama_held_bytes
    reservation = request.ollama_reservation_bytes
    after = max(0, held - sum(m.vram_bytes for m in unload))
    return max(held, reservation) - max(after, reservation)


def ollama_unload_set(request: PlanRequest, shortfall: int) -> list[OllamaModel]:
    """The Ollama models to unload to close ``shortfall``: the single smallest one that
    suffices, else the fewest largest ones; empty when unloading all would not suffice."""
    models = sorted((m for m in request.ollama_models if not m.pinned), key=lambda m: m.vram_bytes)
    for m in models:
        if _ollama_gain(request, [m]) >= shortfall:
            return [m]
    chosen: list[OllamaModel] = []
    for m in reversed(models):
        chosen.append(m)
        if _ollama_gain(request, chosen) >= shortfall:
            return chosen
    return []


def _unload_ollama(request: PlanRequest, shortfall: int) -> list[str]:
    chosen = ollama_unload_set(request, shortfall)
    if not chosen:
        return []
    if len(chosen) == 1:
        return [f"unload Ollama model {chosen[0].name} (frees {mib(chosen[0].vram_bytes)} MiB)"]
    names = ", ".join(c.name for c in chosen)
    return [f"unload Ollama models {names} (frees {mib(_ollama_gain(request, chosen))} MiB)"]


def _stop_other(request: PlanRequest, shortfall: int) -> list[str]:
    """A running backend outside the set whose memory would close the gap (smallest first)."""
    holders = sorted(request.other_holders, key=lambda h: h.held_bytes)
    for h in holders:
        if h.held_bytes >= shortfall:
            return [f"stop {h.owner} (holds {mib(h.held_bytes)} MiB)"]
    if len(holders) > 1 and sum(h.held_bytes for h in holders) >= shortfall:
        return [f"stop {', '.join(h.owner for h in holders)}"]
    return []


def _drop_from_set(
    order: list[InstanceRequest], budgets: dict[str, int], shortfall: int
) -> list[str]:
    """Plan without the smallest provider whose footprint covers the shortfall."""
    if len(order) < 2:
        return []
    by_size = sorted(order, key=lambda r: r.estimate.context_bytes + budgets[r.provider])
    for r in by_size:
        if r.estimate.context_bytes + budgets[r.provider] >= shortfall:
            return [f"plan without {r.provider}"]
    return []


def _lower_pins(
    request: PlanRequest, order: list[InstanceRequest], budgets: dict[str, int], shortfall: int
) -> list[str]:
    """A pinned provider with enough room above its own minimum to give up the shortfall."""
    out: list[str] = []
    for r in order:
        if r.pinned_fraction is None:
            continue
        spare = budgets[r.provider] - r.estimate.min_budget_bytes
        if spare >= shortfall:
            h = max_hundredths(request.total_bytes, budgets[r.provider] - shortfall)
            if hundredths_budget(request.total_bytes, h) >= r.estimate.min_budget_bytes:
                out.append(
                    f"lower gpu_memory_utilization of {r.provider} to {h / HUNDREDTHS:.2f}"
                )
    return out[:1]
