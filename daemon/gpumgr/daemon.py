"""The daemon's composition root: it wires the parts and handles the signals, nothing more.

- ``DaemonLocks``: one daemon per state and runtime directory, taken before anything else is
  touched (then every directory it writes is proven writable);
- ``StatusWiring``: health states, the status document and the read-only status API;
- ``GpuPoller``: the GPU's memory and processes, into the document;
- ``BackendManager``: the keepers and the primitives that start, stop, sleep and wake engines;
- ``Reconciler``: the one writer of what runs: boot adoption, operator commands, reloads (SIGHUP
  and the API alike), hung-engine restarts and the shutdown take turns through it;
- systemd: READY once the API is bound and the GPU read (not when every model has loaded),
  STATUS lines on each transition, WATCHDOG pings from the event loop.

SIGTERM/SIGINT stop every engine and exit 0; SIGHUP (``systemctl reload``) re-reads the three
files and applies them, or keeps everything as it is when they are invalid. With simulation on,
the GPU, the engine and the hub are the simulated ones; the code paths are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI

from gpumgr.actions.hang import HangWatcher
from gpumgr.backend_state import BackendState
from gpumgr.health.machine import FOREIGN_SLEEP, Transition
from gpumgr.actions.manager import BackendManager, ReconcileReport
from gpumgr.actions.operator import Operator
from gpumgr.actions.policy import PolicyRunner
from gpumgr.api.demand_app import add_demand_route
from gpumgr.status.policy_view import publish_policy
from gpumgr.actions.reconciler import Reconciler
from gpumgr.aio import spawn_task
from gpumgr.api.control_app import add_control_routes
from gpumgr.api.server import ApiServer
from gpumgr.errors import GpumgrError
from gpumgr.logs import register_secret
from gpumgr.redaction import provider_secrets
from gpumgr.secrets import read_secret
from gpumgr.config import Config, ConfigError, load_config
from gpumgr.gpu import GpuBackend
from gpumgr.gpu.poller import GpuPoller
from gpumgr.instance_lock import DaemonLocks, ensure_writable
from gpumgr.runtime import RuntimeEnv
from gpumgr.sd_notify import Notifier, watchdog_loop
from gpumgr.status_wiring import StatusWiring
from gpumgr.supervisor.events import EventSink, SupervisorEvent
from gpumgr.supervisor.system import REAL, System

log = structlog.get_logger(__name__)

CONTROL_TOKEN_NAME = "GPUMGR_CONTROL_TOKEN"


def _log_event(event: SupervisorEvent) -> None:
    log.info("supervisor.event", kind=type(event).__name__, **vars(event))


def control_token(config: Config, env: Mapping[str, str]) -> str | None:
    """The bearer token that opens control calls on the TCP listener: ``control.token_file``,
    else the secret ``GPUMGR_CONTROL_TOKEN`` (environment or systemd credential); None: the TCP
    listener stays read-only."""
    path = config.settings.control.token_file
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise GpumgrError(f"control.token_file {path}: cannot read a token ({exc})") from None
    else:
        token = read_secret(CONTROL_TOKEN_NAME, env) or ""
    if not token:
        return None
    if len(token) < 16:
        raise GpumgrError("the control token is shorter than 16 characters; use a longer one")
    register_secret(token)
    return token


def reread_secrets(config: Config, runtime: RuntimeEnv, token_in_use: str | None) -> None:
    """On reload, read the secrets again (a rotated systemd credential or ``token_file``): the
    providers' keys and the control token are registered for masking in logs. Engines read
    their own key at each start (``build_vllm_launch``), probes at each probe; the TCP
    listener keeps the control token it started with (a change is logged: restart to apply)."""
    for value in provider_secrets(config.providers.values(), runtime.environ):
        register_secret(value)
    try:
        token = control_token(config, runtime.environ)
    except GpumgrError as exc:
        log.error("control.token_unreadable", error=str(exc))
        return
    if token != token_in_use:
        log.warning("control.token_changed", applies="at the next daemon start")


def _give_socket_group(path: Path, group: str | None) -> None:
    """Hand the socket to ``control.socket_group`` (its members may then control gpumgr)."""
    if not group:
        return
    try:
        gid = grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
    except (KeyError, PermissionError) as exc:
        raise GpumgrError(f"control.socket_group {group!r}: cannot give it the socket ({exc})") from None


def _log_warnings(config: Config) -> None:
    """What ``gpumgr validate`` would warn about (e.g. a misspelt gpumgr key), in the journal."""
    for issue in config.warnings:
        log.warning("config.warning", issue=str(issue))


def open_inventory(config: Config) -> GpuBackend:
    """NVML, or the simulated card (whose state file and load time each simulated engine is
    given in its environment by the launch builder: ``SimulatedBackend.engine_environment``)."""
    if not config.simulate:
        from gpumgr.gpu.nvml import NvmlBackend

        return NvmlBackend()
    from gpumgr.sim.gpu_backend import SimulatedBackend

    return SimulatedBackend.from_settings(config.settings, config.paths.runtime_dir)


class Daemon:
    """One daemon's live objects. ``start()`` then ``shutdown()``; ``serve()`` does both around
    the signals."""

    def __init__(
        self, config: Config, *, runtime: RuntimeEnv, sink: EventSink | None = None,
        system: System = REAL,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self._extra_sink = sink
        self._system = system
        self._lock = DaemonLocks(config.paths.state_dir, config.paths.runtime_dir)
        self._notifier = Notifier(runtime.environ)
        self._tasks: set[asyncio.Task[None]] = set()
        self.status: StatusWiring | None = None
        self.poller: GpuPoller | None = None
        self.manager: BackendManager | None = None
        self.reconciler: Reconciler | None = None
        self.operator: Operator | None = None
        self.policies: PolicyRunner | None = None
        self.control: ApiServer | None = None
        self._reloads: set[asyncio.Task[None]] = set()
        self._token: str | None = None

    def emit(self, event: SupervisorEvent) -> None:
        _log_event(event)
        if self.status is not None:
            self.status.supervisor_sink(event)
        if self._extra_sink is not None:
            self._extra_sink(event)

    async def start(self) -> None:
        """Everything up to the keepers running; returns without waiting for engines."""
        # state_dir, then runtime_dir, before anything is touched (the control socket above
        # all): a second daemon on either leaves everything alone
        self._lock.acquire()
        _log_warnings(self.config)
        paths = self.config.paths
        ensure_writable({"state_dir": paths.state_dir, "runtime_dir": paths.runtime_dir,
                         "log_dir": paths.log_dir}, create_only={"cache_dir": paths.cache_dir})
        inventory = open_inventory(self.config)
        self.status = status = StatusWiring(self.config, notifier=self._notifier,
                                            env=self.runtime.environ)
        self.manager = manager = BackendManager(
            self.config, inventory, self.emit, health=status.healths,
            on_weights=status.weights_ready, system=self._system,
            base_env=self.runtime.environ, **_simulated_parts(self.config),
        )
        status.expected_startup_s = manager.startup_times.expected_s
        status.expected_wake_s = manager.startup_times.expected_wake_s
        status.desired_engines = lambda: (manager.desired.names, manager.desired.sleeping)
        self.poller = poller = GpuPoller(inventory, manager.managed_pids, status.gpus_read)
        status.on_state_change.append(lambda _t: poller.refresh_soon())
        status.on_state_change.append(functools.partial(_note_foreign_sleep, manager))
        self.reconciler = reconciler = Reconciler(manager)
        self.operator = operator = Operator(reconciler)
        self._token = token = control_token(self.config, self.runtime.environ)

        def control(app: FastAPI, token: str | None = None) -> None:
            add_control_routes(app, operator, self.reload, token=token,
                               observe=status.observe_operation)

        self.policies = policies = PolicyRunner(
            reconciler, operator, publish=functools.partial(publish_policy, status.publisher))

        def tcp_routes(app: FastAPI) -> None:  # the demand reports, and control with a token
            add_demand_route(app, policies.report, token=token)
            if token is not None:
                control(app, token=token)

        await status.start_api(tcp_routes)
        socket_app = status.app()
        control(socket_app)
        add_demand_route(socket_app, policies.report, token=None)
        self.control = ApiServer.unix(socket_app, paths.control_socket, mode=0o660)
        _give_socket_group(paths.control_socket, self.config.settings.control.socket_group)
        await self.control.start()
        first_read = await poller.poll_once()
        status.start_probes()
        poller.start()
        spawn_task(self._tasks, watchdog_loop(self._notifier), "watchdog")
        gpus = f"{len(first_read.gpus)} GPU(s)" if first_read.available else "no GPU"
        self._notifier.ready(f"listening on {status.listen_address}; {gpus}")
        log.info("daemon.ready", listen=status.listen_address, gpus=gpus)
        spawn_task(self._tasks, manager.warm_versions(), "vllm-versions")
        await reconciler.boot(first_read)
        if self.config.settings.health.restart_unresponsive_after_s is not None:
            spawn_task(self._tasks, HangWatcher(reconciler, status.healths).run(), "hang-watcher")
        spawn_task(self._tasks, policies.run(), "policies")
        status.adoption_done()
        log.info("daemon.started", backends=list(manager.keepers), simulated=self.config.simulate)

    async def shutdown(self) -> None:
        """Stop every engine, then the publication; release the state directory."""
        self._notifier.stopping()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.control is not None:
            await self.control.stop()
            self.config.paths.control_socket.unlink(missing_ok=True)
        if self.reconciler is not None:
            await self.reconciler.shutdown()
        if self.poller is not None:
            await self.poller.stop()
        if self.status is not None:
            await self.status.stop()
        self._lock.release()
        log.info("daemon.stopped")

    async def serve(self) -> int:
        """Run until SIGTERM or SIGINT; then stop every child and return 0."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            starting = asyncio.ensure_future(self.start())
            waiter = asyncio.ensure_future(stop.wait())
            await asyncio.wait({starting, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a configuration, GPU or lock error ends the daemon here
                await waiter
            else:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        finally:
            for task in list(self._reloads):
                task.cancel()
            await asyncio.gather(*self._reloads, return_exceptions=True)
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    # -- reload ----------------------------------------------------------------------------
    def request_reload(self) -> None:
        """SIGHUP: a reload command; it waits its turn behind the command in flight (a swap,
        say) and the one before it, and is applied after them."""
        async def reload() -> None:
            with contextlib.suppress(GpumgrError):  # shutting down: the reload is moot
                await self.reload()

        spawn_task(self._reloads, reload(), "reload")

    async def reload(self) -> ReloadOutcome:
        """Re-read the three files now; when valid, apply them in the reconciler's turn (after
        the operation in flight): start added providers, stop removed ones, restart exactly
        those whose launch identity changed. An invalid file is refused at once and keeps
        everything running as it is; the outcome names every error with file:line."""
        reconciler = self.reconciler
        if reconciler is None or self.status is None:
            return ReloadOutcome(False, errors=["the daemon is not running yet"])
        try:  # read now: an invalid file is answered at once, never queued
            config = await asyncio.to_thread(
                load_config, self.config.config_dir, simulate=self.config.simulate,
                env=self.runtime.environ,
            )
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("config.reload_invalid", issue=str(issue))
            self._notifier.status(f"reload refused: {len(exc.issues)} configuration error(s)")
            return ReloadOutcome(False, errors=[str(i) for i in exc.issues])
        log.info("reload.accepted", waiting_for=reconciler.mutation.what if reconciler.mutation else None)
        async with reconciler.turn("reload"):
            _log_warnings(config)
            reread_secrets(config, self.runtime, self._token)
            self.config = config
            self.status.reload(config)
            report = await reconciler.reload(config)
            self.status.prune()
            self.status.reloaded(report.restarted)
        self._notifier.status(
            f"reloaded: {len(report.started)} started, {len(report.stopped)} stopped, "
            f"{len(report.restarted)} restarted"
        )
        log.info("config.reloaded", **vars(report))
        return ReloadOutcome(True, report=report,
                             warnings=[str(w) for w in config.warnings] + report.warnings())


@dataclass
class ReloadOutcome:
    """What a reload did: applied (with what it changed), or refused with every error."""

    applied: bool
    report: ReconcileReport | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _simulated_parts(config: Config) -> dict[str, Any]:
    """With simulation on: the simulated engine's command and hub, for the manager (the only
    place outside the CLI that knows the simulation exists)."""
    if not config.simulate:
        return {}
    from gpumgr.sim import SIM_ENGINE_COMMAND
    from gpumgr.sim.hub import hub_endpoint

    configured = config.settings.simulate.hub_endpoint
    return {"command": SIM_ENGINE_COMMAND, "hub": lambda: hub_endpoint(configured)}


def run_daemon(config: Config, *, runtime: RuntimeEnv, sink: EventSink | None = None) -> int:
    """Blocking entry point for ``gpumgr daemon``.

    After an orderly shutdown, a download still in flight (huggingface_hub's own worker
    threads, which the interpreter would join at exit) is abandoned rather than waited for:
    its partial files are cleaned up by the next pull, under the repository's lock.
    """
    code = asyncio.run(Daemon(config, runtime=runtime, sink=sink).serve())
    # Daemon or not, executor workers are joined at interpreter exit (concurrent.futures' own
    # atexit hook), so any thread still running here would hold the exit up.
    busy = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if busy:
        log.info("daemon.abandoned_threads", threads=busy)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _note_foreign_sleep(manager: BackendManager, t: Transition) -> None:
    """An engine someone else put to sleep (vLLM's /sleep needs no API key) is asleep to its
    keeper too, so `gpumgr wake NAME` wakes it; nothing wakes it on its own (issue 19)."""
    keeper = manager.keepers.get(t.backend)
    if keeper is not None and t.new is BackendState.SLEEPING and t.reason == FOREIGN_SLEEP:
        keeper.found_asleep()
