"""The one fit decision: may these providers start (or this sleeper wake) now, with which slices,
after unloading which Ollama models, or why not. Pure: the caller reads the card, Ollama and the
model files; this module only decides.

Every question gpumgr asks about room goes through ``decide``: a start, each leg of a swap (the
new model *beside* the old one for make-before-break, and once the old one is gone or asleep),
a wake (the sleeper needs its whole slice back), a restart after an out-of-memory exit (only a
slice the out-of-memory table allows, ``gpumgr.plan.oom``), the planner of a starting engine and
``gpumgr plan``. So the check made before an operation and the plan its engine starts with are
the same computation on the same kind of input, and cannot disagree.

The rules, in order:

1. The backends in ``gone`` leave first: their memory comes back, except ``residual`` bytes for
   one that sleeps (its CUDA context). They are not planned, unless they are also ``starting``:
   a restart (of a running engine or of a sleeper) is its engine leaving, all its memory back,
   and the same provider planned afresh, exactly as the planner of its new engine will see it.
2. The backends that stay keep the slice they run with (``running_fractions``): they are planned
   pinned at it, their memory counted as theirs again. The ``starting`` ones get new slices.
3. Ollama: under ``unload_all`` every loaded model is unloaded before a start; under
   ``unload_idle`` the smallest set that closes the shortfall, only when the plan does not fit
   otherwise; under ``never`` nothing (the fix is then named). The plan is made as if the models
   were already unloaded; ``unload`` names them for the caller to do it.
4. After an out-of-memory exit at fraction f, the joint plan's slice must move the way the
   out-of-memory table says; when it does not, the provider alone on what is free is tried; else
   the start is refused.
5. A refusal changes nothing: ``unload`` is empty and ``plan`` None. Its message is one line:
   the shortfall with the nearest fix, and every fix the planner found, least disruptive first.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from gpumgr.gpu import MIB, OWNER_OLLAMA, GpuInfo, GpuProcess
from gpumgr.plan.explain import ollama_unload_set
from gpumgr.plan.model import InstanceRequest, OllamaModel, VramPlan
from gpumgr.plan.oom import Move, allows, next_move, rule_for
from gpumgr.plan.request import request_for_gpu
from gpumgr.plan.slices import plan_slices

Eviction = Literal["never", "unload_idle", "unload_all"]


@dataclass(frozen=True)
class Room:
    """The settings that decide how much of a card a plan may use."""

    reserve_bytes: int = 0
    """``gpu.reserve_mib``: never handed out."""
    ollama_reservation_bytes: int = 0
    """``ollama.reservation_mib``: kept for Ollama beyond what it holds."""
    eviction: Eviction = "never"
    """``ollama.eviction``."""


@dataclass(frozen=True)
class AfterOom:
    """The last attempt ran out of memory with ``fraction`` (``kind``: an ``OomKind`` value)."""

    fraction: float
    kind: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Why not, in one line, and the fixes the planner found, least disruptive first."""

    reason: str
    fixes: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Decision:
    """The answer. ``ok`` ⇔ no refusal. ``plan`` is the feasible plan to start with (None when
    refused, and for a wake: a sleeper wakes with the slice it has). ``considered`` is the plan
    that was weighed, feasible or not (what ``gpumgr plan`` prints)."""

    plan: VramPlan | None
    unload: tuple[OllamaModel, ...] = ()
    refusal: Refusal | None = None
    considered: VramPlan | None = None
    gpu: GpuInfo | None = field(default=None, compare=False)
    """The card as the decision saw it: after ``gone`` left and ``unload`` was unloaded."""

    @property
    def ok(self) -> bool:
        return self.refusal is None


def decide(
    gpu: GpuInfo,
    requests: Sequence[InstanceRequest],
    starting: Collection[str],
    *,
    room: Room = Room(),
    running_fractions: Mapping[str, float] | None = None,
    gone: frozenset[str] = frozenset(),
    residual: Mapping[str, int] | None = None,
    ollama: Sequence[OllamaModel] | None = None,
    wake: bool = False,
    after_oom: AfterOom | None = None,
) -> Decision:
    """Decide whether ``starting`` may start on ``gpu`` now (see the module's rules).

    ``gpu`` is an attributed reading (each process's owner known). ``requests`` are the planning
    inputs of every provider meant to run on this card, the starting ones included, in the
    registry's order. ``ollama`` is Ollama's ``/api/ps`` (None when it did not answer). ``wake``:
    the one starting provider is asleep and needs its whole running slice back.
    """
    running = running_fractions or {}
    card = without_owners(gpu, gone, residual or {})
    if wake:
        return _decide_wake(card, starting, running, gone, residual or {}, room, ollama)
    reqs = [
        replace(r, pinned_fraction=running[r.provider])
        if r.provider not in starting and r.provider in running
        else r
        for r in requests
        if r.provider not in gone or r.provider in starting
    ]
    unload: tuple[OllamaModel, ...] = ()
    if ollama and room.eviction == "unload_all":
        unload = tuple(m for m in ollama if not m.pinned)
        card = after_unload(card, unload)
        plan = _plan(card, reqs, room, [m for m in ollama if m.pinned])
    else:
        plan = _plan(card, reqs, room, ollama)
        if not plan.feasible and ollama and room.eviction != "never":
            victims = ollama_unload_set(plan.request, max(p.shortfall_bytes for p in plan.problems))
            if victims:
                unload = tuple(victims)
                card = after_unload(card, unload)
                plan = _plan(card, reqs, room, [m for m in ollama if m not in victims])
    if after_oom is not None:
        return _decide_after_oom(card, plan, reqs, starting, after_oom, unload, room)
    if plan.feasible:
        return Decision(plan, unload, None, plan, card)
    why = "; ".join(p.message for p in plan.problems)
    others = sorted(gone - set(starting))
    if others:
        how = "sleeps" if residual else "is stopped"
        why = f"{', '.join(starting)} does not fit even once {', '.join(others)} {how}: {why}"
    elif gone:
        why = f"{', '.join(starting)} would not fit once restarted: {why}"
    return Decision(None, (), Refusal(why, _fixes(plan)), plan, card)


def _plan(
    card: GpuInfo, reqs: Sequence[InstanceRequest], room: Room,
    ollama: Sequence[OllamaModel] | None,
) -> VramPlan:
    return plan_slices(
        request_for_gpu(
            card, reqs, reserve_bytes=room.reserve_bytes, ollama_models=ollama,
            ollama_reservation_bytes=room.ollama_reservation_bytes,
        )
    )


def _fixes(plan: VramPlan) -> tuple[str, ...]:
    out: list[str] = []
    for p in plan.problems:
        out.extend(f for f in p.fixes if f not in out)
    return tuple(out)


def _decide_after_oom(
    card: GpuInfo,
    plan: VramPlan,
    reqs: Sequence[InstanceRequest],
    starting: Collection[str],
    oom: AfterOom,
    unload: tuple[OllamaModel, ...],
    room: Room,
) -> Decision:
    """Rule 4: the joint plan if its slice moves the way the table says, else the provider alone
    on what is free, else a refusal naming the way no slice fits."""
    (name,) = starting
    if plan.feasible and allows(oom.kind, oom.fraction, plan.instance(name).fraction):
        return Decision(plan, unload, None, plan, card)
    own = [r for r in reqs if r.provider == name]
    alone = _plan(card, own, room, None)
    if alone.feasible and allows(oom.kind, oom.fraction, alone.instance(name).fraction):
        return Decision(alone, unload, None, alone, card)
    why = "; ".join(p.message for p in (alone.problems or plan.problems))
    move = next_move(oom.kind, oom.fraction)
    way = (rule_for(oom.kind).move if move is Move.GIVE_UP else move).value
    reason = (
        f"{name}: out of memory with --gpu-memory-utilization {oom.fraction:g} and no {way} "
        "slice fits" + (f" ({why})" if why else "")
    )
    return Decision(None, (), Refusal(reason, _fixes(alone) or _fixes(plan)), alone, card)


def _decide_wake(
    card: GpuInfo,
    starting: Collection[str],
    running: Mapping[str, float],
    gone: frozenset[str],
    residual: Mapping[str, int],
    room: Room,
    ollama: Sequence[OllamaModel] | None = None,
) -> Decision:
    """A sleeper wakes with the slice it was started with: that much must be free (after the
    reserve) once ``gone`` left; Ollama's models make room as for a start (rule 3: under
    ``unload_all`` all, under ``unload_idle`` the smallest set that closes the shortfall). Its
    slice unknown (an adopted engine whose record lost it): nothing to check."""
    (name,) = starting
    fraction = running.get(name)
    if fraction is None:
        return Decision(None, (), None, None, card)
    needed = int(fraction * card.memory_total_bytes)
    free = card.memory_free_bytes - room.reserve_bytes
    if free >= needed:
        return Decision(None, (), None, None, card)
    if ollama and room.eviction != "never":
        victims = wake_unload_set(ollama, needed - free, room.eviction == "unload_all")
        if victims:
            return Decision(None, victims, None, None, after_unload(card, victims))
    how = "sleeps" if residual else "stops"
    reason = (
        f"{name} cannot wake: it needs {needed // MIB} MiB more, {free // MIB} MiB would be free"
        + (f" once {', '.join(sorted(gone))} {how}" if gone else "")
    )
    return Decision(None, (), Refusal(reason), None, card)


def wake_unload_set(ollama: Sequence[OllamaModel], shortfall: int,
                    everything: bool) -> tuple[OllamaModel, ...]:
    """The Ollama models to unload so a sleeper can wake: every unpinned one (``everything``),
    else the single smallest that closes ``shortfall``, else the fewest largest; empty when
    unloading them all would not close it."""
    models = sorted((m for m in ollama if not m.pinned), key=lambda m: m.vram_bytes)
    if sum(m.vram_bytes for m in models) < shortfall:
        return ()
    if everything:
        return tuple(models)
    for m in models:
        if m.vram_bytes >= shortfall:
            return (m,)
    chosen: list[OllamaModel] = []
    for m in reversed(models):
        chosen.append(m)
        if sum(c.vram_bytes for c in chosen) >= shortfall:
            break
    return tuple(chosen)


def without_owners(gpu: GpuInfo, owners: frozenset[str], residual: Mapping[str, int]) -> GpuInfo:
    """``gpu`` as it will be once the processes of ``owners`` are gone (or asleep, keeping
    ``residual[owner]`` bytes) and the rest of their memory back."""
    if not owners:
        return gpu
    kept: list[GpuProcess] = []
    leaving = 0
    for p in gpu.processes:
        if p.owner not in owners:
            kept.append(p)
            continue
        stays = min(residual.get(p.owner, 0), p.used_bytes or 0)
        leaving += (p.used_bytes or 0) - stays
        if stays:
            kept.append(replace(p, used_bytes=stays))
            residual = {**residual, p.owner: 0}  # one residual per owner
    return replace(
        gpu,
        processes=tuple(kept),
        memory_free_bytes=gpu.memory_free_bytes + leaving,
        memory_used_bytes=max(0, gpu.memory_used_bytes - leaving),
    )


def after_unload(gpu: GpuInfo, models: Sequence[OllamaModel]) -> GpuInfo:
    """``gpu`` as it will be once Ollama unloaded ``models`` (their VRAM back, taken off what
    Ollama's processes hold)."""
    freed = sum(m.vram_bytes for m in models)
    left = freed
    processes: list[GpuProcess] = []
    for p in gpu.processes:
        if p.owner == OWNER_OLLAMA and left > 0 and p.used_bytes:
            take = min(left, p.used_bytes)
            left -= take
            if p.used_bytes - take:
                processes.append(replace(p, used_bytes=p.used_bytes - take))
            continue
        processes.append(p)
    return replace(
        gpu,
        processes=tuple(processes),
        memory_free_bytes=gpu.memory_free_bytes + freed,
        memory_used_bytes=max(0, gpu.memory_used_bytes - freed),
    )
