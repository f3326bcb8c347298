"""The boot command: fold the registry into the stored desired state, adopt the engines an
earlier daemon left, finish or undo an operation it was killed in, stop what nobody wants, and
launch a keeper for every backend that should run.

An operation found half done (its ``intent`` in desired.json) goes to its target when the
target's engines all survived (a start that was loading, a make-before-break whose new engine
came up), back to the previous state when only those survived (a swap killed while the old
model drained), and otherwise on to the target, rolling back if that fails. Never to nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from gpumgr.aio import spawn_task
from gpumgr.errors import GpumgrError
from gpumgr.gpu import GpuInventory

from . import admit
from .adopt import adopt_recorded
from .desired import DesiredState, desired_for
from .manager import ReconcileReport

if TYPE_CHECKING:
    from .reconciler import Reconciler

log = structlog.get_logger(__name__)


async def boot(r: Reconciler, first_read: GpuInventory) -> ReconcileReport:
    """The body of the boot command (its turn held by the caller)."""
    manager = r.manager
    manager.attach(first_read)
    desired = desired_for(manager.config, await manager.load_desired())
    intent = desired.intent
    wanted = set(desired.names) | (set(intent.previous.names) if intent else set())
    adoption = await adopt_recorded(manager.records, wanted, manager.config.paths.log_dir)
    involved: list[str] = []
    follow: tuple[DesiredState, DesiredState] | None = None
    if intent is not None:
        target, previous = desired.with_intent(None), intent.previous
        involved = changed(previous, target)
        alive = adoption.adopted.keys()
        if all(n in alive for n in previous.running) and not all(n in alive for n in target.running):
            log.warning("boot.intent_undone", operation=intent.operation,
                        why="the daemon died during it; what ran before still runs")
            desired = previous
            follow = (previous, previous)
        else:
            log.warning("boot.intent_resumed", operation=intent.operation,
                        why="the daemon died during it; going on to its target")
            desired = target
            follow = (target, previous)
    await r.write(desired)
    report = ReconcileReport()
    for name, child in adoption.adopted.items():
        if name not in desired.running:
            adoption.unwanted.append((child, adoption.records[name]))
    for child, record in adoption.unwanted:
        log.info("adopt.unwanted", backend=child.backend, pid=child.pid)
        await manager.stop_adopted(child, record)
        report.stopped.append(child.backend)
    fresh: list[str] = []
    for name, identity in desired.running.items():
        found, kept = adoption.records.get(name), adoption.adopted.get(name)
        if kept is None or found is None:
            if name in involved:
                continue  # the operation's follow-up starts it (or rolls back)
            if name in desired.sleeping:
                log.info("adopt.sleeper_gone", backend=name)  # asleep means "not serving"
                await r.write(r.desired.without(name))
                continue
            fresh.append(name)
            continue
        recorded = found.extra.get("identity")
        if isinstance(recorded, dict) and recorded != identity:
            # the configuration changed while no daemon ran: not the engine asked for now
            log.info("adopt.changed", backend=name, pid=kept.pid)
            await manager.stop_adopted(kept, found)
            manager.launch(name)
            report.restarted.append(name)
            continue
        manager.launch(name, kept, found.fraction, found.gpu_uuid)
        report.adopted.append(name)
    for i, name in enumerate(fresh):  # after the adopted: an engine that runs keeps its port
        held = admit.port_holder(manager, r.desired, name, fresh[i + 1:])
        if held is not None:  # the file changed while no daemon ran (a promotion): as a reload
            await r.refuse(name, held, report)
            continue
        manager.launch(name)
        report.started.append(name)
    if follow is not None and intent is not None:
        spawn_task(r.tasks, finish(r, intent.operation, *follow, involved), "finish")
    log.info("reconciler.booted", **vars(report))
    return report


async def finish(r: Reconciler, operation: str, target: DesiredState, previous: DesiredState,
                 involved: Sequence[str]) -> None:
    """After a boot that found an operation's intent: converge the backends it touched to
    ``target`` (waking or putting to sleep adopted engines, starting missing ones), rolling
    back to ``previous`` if that fails."""
    await r.manager.settled(involved)
    order = sorted(involved, key=lambda n: (n in target.running
                                            and n not in target.sleeping, n))
    what = f"finish {operation}"
    try:
        async with r.turn(what):
            await r.apply(what, target, [n for n in order if n in r.manager.known()],
                          previous=previous)
    except GpumgrError as exc:
        log.error("boot.finish_failed", operation=operation, error=str(exc))


def changed(a: DesiredState, b: DesiredState) -> list[str]:
    """The backends whose desired running, identity or sleep differs between ``a`` and ``b``."""
    names = set(a.running) | set(b.running)
    return sorted(n for n in names if a.running.get(n) != b.running.get(n)
                  or (n in a.sleeping) != (n in b.sleeping))
