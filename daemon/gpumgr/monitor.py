"""What the daemon tells the world: backend health, the status document and its publication.

Wires the pieces that each own one thing: the ``HealthScheduler`` owns every backend's health
state, the ``StatusPublisher`` owns the document (HTTP, SSE, ``status.json``, ``/metrics``), the
GPU inventory is polled into the document, and systemd hears READY/STATUS/WATCHDOG. Supervisor
events arrive through ``supervisor_sink``; the daemon (the composition root) owns this object.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import httpx2
import structlog

from gpumgr.api.server import ApiServer, parse_listen
from gpumgr.api.status_app import create_status_app
from gpumgr.backend_state import BackendState
from gpumgr.config import Config
from gpumgr.engines.probe_result import ProbeResult
from gpumgr.gpu import GpuBackend, GpuInventory
from gpumgr.gpu.attribution import attribute
from gpumgr.health.machine import BackendHealth, Transition
from gpumgr.health.scheduler import HealthScheduler
from gpumgr.health.supervisor_events import apply_supervisor_event
from gpumgr.logs import register_secret
from gpumgr.sd_notify import Notifier
from gpumgr.status.document import DaemonInfo, GpuStatus
from gpumgr.status.publisher import StatusPublisher
from gpumgr.redaction import provider_secrets, redactor_for
from gpumgr.status.seed import initial_backends
from gpumgr.supervisor.events import (
    ChildExited,
    ChildStarted,
    ChildStopped,
    Restarting,
    SupervisorEvent,
)

log = structlog.get_logger(__name__)

GPU_POLL_S = 1.0
"""How often the GPU's memory and processes are re-read into the document."""

UnresponsiveHook = Callable[[str, str], bool]
"""Asked to restart a hung backend; True when a restart was set in motion."""


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class Monitor:
    def __init__(
        self,
        config: Config,
        inventory: GpuBackend,
        *,
        managed_pids: Callable[[], Mapping[int, str]],
        on_unresponsive: UnresponsiveHook | None = None,
        notifier: Notifier | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._inventory = inventory
        self._managed_pids = managed_pids
        self._on_unresponsive = on_unresponsive
        self._notifier = notifier or Notifier()
        env = os.environ if env is None else env
        secrets = provider_secrets(config.providers.values(), env)
        for s in secrets:
            register_secret(s)
        self.publisher = StatusPublisher(
            daemon=DaemonInfo(pid=os.getpid(), started_at=datetime.now(UTC), simulated=config.simulate),
            status_path=config.paths.status_file,
            redact=redactor_for(secrets),
        )
        seeded = initial_backends(config.providers.values())
        self.publisher.set_backends(seeded)
        self._client = httpx2.AsyncClient()
        self.scheduler = HealthScheduler(
            config.providers,
            config.settings.health,
            config.providers_file.health_checks,
            self._client,
            on_transition=self._on_transition,
            on_probe=self._on_probe,
            env=env,
            initial_states={b.name: b.state for b in seeded},  # one rule for the first states
        )
        self._api: ApiServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._down_since: dict[str, float] = {}
        self._restarts: dict[str, int] = {}
        self.last_inventory: GpuInventory | None = None
        self._gpu_refresh: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the status API, read the GPU once, start probing; then tell systemd READY."""
        host, port = parse_listen(self.config.listen)
        self._api = ApiServer.tcp(create_status_app(self.publisher), host, port)
        await self._api.start()
        await self._poll_gpus_once()
        self.scheduler.start()
        self._tasks.append(asyncio.create_task(self._gpu_loop(), name="gpu-poll"))
        self._tasks.append(asyncio.create_task(self._unresponsive_loop(), name="unresponsive"))
        if self._notifier.watchdog_interval_s:
            self._tasks.append(asyncio.create_task(self._watchdog_loop(), name="watchdog"))
        inv = self.last_inventory
        gpus = f"{len(inv.gpus)} GPU(s)" if inv and inv.available else "no GPU"
        self._notifier.ready(f"listening on {self.listen_address}; {gpus}")
        log.info("daemon.ready", listen=self.listen_address, gpus=gpus)

    @property
    def listen_address(self) -> str:
        assert self._api is not None
        return self._api.address

    @property
    def port(self) -> int | None:
        return self._api.port if self._api else None

    async def stop(self) -> None:
        self._notifier.stopping()
        if self._gpu_refresh is not None:
            self._tasks.append(self._gpu_refresh)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.scheduler.stop()
        self.publisher.close()
        if self._api is not None:
            await self._api.stop()
        await self._client.aclose()

    # -- inputs ----------------------------------------------------------------------------
    def supervisor_sink(self, event: SupervisorEvent) -> None:
        """Supervisor events: the state machine moves at once, the document gets pid/slice."""
        if isinstance(event, ChildStarted):
            changes: dict[str, object] = {"pid": event.pid, "port": event.port}
            if event.fraction is not None:  # an adopted child's slice is not re-announced
                changes["gpu_memory_utilization"] = event.fraction
            self.publisher.update_backend(event.backend, **changes)
        elif isinstance(event, Restarting):
            self._restarts[event.backend] = self._restarts.get(event.backend, 0) + 1
            self.publisher.update_backend(event.backend, restarts=self._restarts[event.backend])
        elif isinstance(event, (ChildStopped, ChildExited)):
            self.publisher.update_backend(event.backend, pid=None)
        apply_supervisor_event(self.scheduler, event)

    def downloading(self, backend: str, detail: str) -> None:
        """Weights are being fetched for ``backend`` (progress in ``detail``)."""
        if self.scheduler.health(backend).state is not BackendState.DOWNLOADING:
            self.scheduler.lifecycle(backend, BackendState.DOWNLOADING, detail)
        else:
            self.publisher.update_backend(backend, detail=detail)

    # -- callbacks -------------------------------------------------------------------------
    def _on_transition(self, t: Transition) -> None:
        self.publisher.update_backend(t.backend, state=t.new, detail=t.reason, since=_utc(t.at))
        self._refresh_gpus_soon()  # a state change usually moves memory: show it now
        if t.new is BackendState.DOWN:
            self._down_since.setdefault(t.backend, time.monotonic())
        else:
            self._down_since.pop(t.backend, None)
        up = sum(1 for b in self.publisher.document.backends if b.available)
        total = sum(1 for b in self.publisher.document.backends if b.state is not BackendState.DISABLED)
        self._notifier.status(f"{up}/{total} backends up; {t.backend} {t.new.value}")

    def _on_probe(self, name: str, result: ProbeResult, health: BackendHealth) -> None:
        unavailable = {m.name: m.reason or "unavailable" for m in result.models if not m.available}
        self.publisher.update_backend(
            name,
            last_check=datetime.now(UTC),
            latency_ms=result.latency_ms,
            busy=bool(result.busy),
            unavailable_models=unavailable,
            detail=health.reason,
        )

    # -- loops -----------------------------------------------------------------------------
    async def _poll_gpus_once(self) -> None:
        inv = await asyncio.to_thread(self._inventory.read)
        managed = dict(self._managed_pids())
        inv = attribute(inv, managed, managed)
        self.last_inventory = inv
        self.publisher.set_gpus(
            [GpuStatus.model_validate(g.to_dict()) for g in inv.gpus] if inv.available else []
        )

    def _refresh_gpus_soon(self) -> None:
        if self._gpu_refresh is None or self._gpu_refresh.done():
            with contextlib.suppress(RuntimeError):  # no running loop (tests driving callbacks)
                self._gpu_refresh = asyncio.get_running_loop().create_task(self._poll_gpus_safely())

    async def _poll_gpus_safely(self) -> None:
        try:
            await self._poll_gpus_once()
        except Exception as exc:  # noqa: BLE001 - a bad read must not end a loop or a task
            log.warning("gpu.poll_failed", error=f"{type(exc).__name__}: {exc}")

    async def _gpu_loop(self) -> None:
        while True:
            await asyncio.sleep(GPU_POLL_S)
            await self._poll_gpus_safely()

    async def _unresponsive_loop(self) -> None:
        """Separate from the GPU poll: a hung NVML read must not stop hung-engine restarts."""
        while True:
            await asyncio.sleep(GPU_POLL_S)
            self._check_unresponsive()

    def _check_unresponsive(self) -> None:
        """A managed engine that stays down while its process lives is hung: restart it."""
        after_s = self.config.settings.health.restart_unresponsive_after_s
        if self._on_unresponsive is None or after_s is None:
            return
        now = time.monotonic()
        for name, since in list(self._down_since.items()):
            if now - since >= after_s:
                reason = self.scheduler.health(name).reason
                if self._on_unresponsive(name, f"down for {after_s:g} s while its process lives: {reason}"):
                    del self._down_since[name]

    async def _watchdog_loop(self) -> None:
        assert self._notifier.watchdog_interval_s
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(self._notifier.watchdog_interval_s)
