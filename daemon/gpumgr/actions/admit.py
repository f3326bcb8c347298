"""Whether a backend the owner's file newly asks for may start: the reload's (and the boot's)
check, the same as an operator's ``gpumgr start`` is checked with.

A reload (or a boot after the file changed) that marks a standby provider ``active`` asks for a
start nobody typed. It has no operator to refuse, so it is checked here before its keeper is
launched: its port must not be held by another backend that should run (the new engine could
not bind it, and its keeper would wait for the port for good), and the set that should run on
its card must fit (``plan.decide``, through the launch planner: the very decision its engine's
planner would make). A refusal is not an error of the reload: the rest is applied, the backend
is left out of ``desired.json`` (which says what runs), published ``stopped`` with the reason,
and the reason is one of the reload's warnings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

import structlog

from gpumgr.config.registry import Provider
from gpumgr.errors import GpumgrError
from gpumgr.weights import WeightsContext

from .desired import DesiredState
from .manager import BackendManager

log = structlog.get_logger(__name__)


def port_holder(manager: BackendManager, desired: DesiredState, name: str,
                pending: Collection[str] = ()) -> str | None:
    """Why ``name``'s port is taken: another backend that should run (awake or asleep, not one
    still ``pending`` its own check) listens there. None when it is free of them."""
    port = manager.provider(name).port
    known = manager.known()
    for other in desired.running:
        if other == name or other in pending or other not in known:
            continue
        if manager.provider(other).port == port:
            how = "asleep" if other in desired.sleeping else "running"
            return (f"port {port} is held by {other} ({how}): `gpumgr swap {other} {name}` "
                    f"runs {name} instead")
    return None


async def refusal(manager: BackendManager, desired: DesiredState, name: str,
                  pending: Collection[str] = ()) -> str | None:
    """Why ``name`` may not start now beside what ``desired`` runs (less ``pending``), or None.
    Its weights not on disk yet: no plan can be made before they come; its engine's planner
    then makes the same decision (and a refusal there is ``failed`` with the same reason)."""
    held = port_holder(manager, desired, name, pending)
    if held is not None:
        return held
    provider = manager.provider(name)
    snapshot = await asyncio.to_thread(_local_snapshot, manager, provider)
    if snapshot is None:
        return None
    wanted = set(desired.running) - set(pending)
    view = manager.plan_view(wanted)
    view = replace(view, snapshots={**view.snapshots, name: snapshot})
    try:
        decision = await asyncio.to_thread(manager.planner.decide, provider, view)
    except GpumgrError as exc:  # the card cannot be read now: the keeper's start will say so
        log.warning("admit.undecided", backend=name, error=str(exc))
        return None
    return decision.refusal.message if decision.refusal is not None else None


def _local_snapshot(manager: BackendManager, provider: Provider) -> Path | None:
    """The provider's complete snapshot directory on disk (no network), or None."""
    try:
        found = WeightsContext.from_config(manager.config).local(provider)
    except (OSError, ValueError) as exc:
        log.info("admit.weights_unknown", backend=provider.name, error=str(exc))
        return None
    return found.path if found is not None else None
