"""The daemon's composition root: it wires the parts and handles the signals, nothing more.

- ``InstanceLock``: one daemon per state directory, taken before anything else is touched;
- ``StatusWiring``: health states, the status document and the read-only status API;
- ``GpuPoller``: the GPU's memory and processes, into the document;
- ``BackendManager``: what runs (adoption, starts, restarts, stops, reloads);
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
from pathlib import Path

import structlog
from fastapi import FastAPI

from gpumgr.actions.manager import BackendManager, ReconcileReport
from gpumgr.actions.operator import Operator
from gpumgr.aio import spawn_task
from gpumgr.api.control_app import add_control_routes
from gpumgr.api.server import ApiServer
from gpumgr.errors import GpumgrError
from gpumgr.logs import register_secret
from gpumgr.secrets import read_secret
from gpumgr.config import Config, ConfigError, load_config
from gpumgr.gpu import GpuBackend
from gpumgr.gpu.poller import GpuPoller
from gpumgr.instance_lock import InstanceLock
from gpumgr.sd_notify import Notifier, watchdog_loop
from gpumgr.sim.gpu import STATE_ENV
from gpumgr.status_wiring import StatusWiring
from gpumgr.supervisor.events import EventSink, SupervisorEvent
from gpumgr.supervisor.system import REAL, System

log = structlog.get_logger(__name__)

SIM_LOAD_ENV = "GPUMGR_SIM_LOAD_SECONDS"
CONTROL_TOKEN_NAME = "GPUMGR_CONTROL_TOKEN"


def _log_event(event: SupervisorEvent) -> None:
    log.info("supervisor.event", kind=type(event).__name__, **vars(event))


def control_token(config: Config, env: Mapping[str, str] | None = None) -> str | None:
    """The bearer token that opens control calls on the TCP listener: ``control.token_file``,
    else the secret ``GPUMGR_CONTROL_TOKEN`` (environment or systemd credential); None: the TCP
    listener stays read-only."""
    env = os.environ if env is None else env
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
    """NVML, or the simulated card (whose state file the simulated engines find through the
    environment they inherit)."""
    if not config.simulate:
        from gpumgr.gpu.nvml import NvmlBackend

        return NvmlBackend()
    from gpumgr.sim.gpu_backend import SimulatedBackend, sim_state_path

    settings, runtime_dir = config.settings, config.paths.runtime_dir
    backend = SimulatedBackend.from_settings(settings, runtime_dir)
    os.environ[STATE_ENV] = str(sim_state_path(runtime_dir))
    load_s = settings.simulate.load_seconds
    if load_s is not None:
        os.environ.setdefault(SIM_LOAD_ENV, f"{load_s:g}")
    return backend


class Daemon:
    """One daemon's live objects. ``start()`` then ``shutdown()``; ``serve()`` does both around
    the signals."""

    def __init__(
        self, config: Config, *, sink: EventSink | None = None, system: System = REAL
    ) -> None:
        self.config = config
        self._extra_sink = sink
        self._system = system
        self._lock = InstanceLock(config.paths.state_dir)
        self._notifier = Notifier()
        self._tasks: set[asyncio.Task[None]] = set()
        self.status: StatusWiring | None = None
        self.poller: GpuPoller | None = None
        self.manager: BackendManager | None = None
        self.operator: Operator | None = None
        self.control: ApiServer | None = None
        self._reloading: asyncio.Task[None] | None = None

    def emit(self, event: SupervisorEvent) -> None:
        _log_event(event)
        if self.status is not None:
            self.status.supervisor_sink(event)
        if self._extra_sink is not None:
            self._extra_sink(event)

    async def start(self) -> None:
        """Everything up to the keepers running; returns without waiting for engines."""
        self._lock.acquire()  # before anything is touched: a second daemon leaves all alone
        _log_warnings(self.config)
        paths = self.config.paths
        for d in (paths.runtime_dir, paths.state_dir, paths.log_dir, paths.cache_dir):
            d.mkdir(parents=True, exist_ok=True)
        inventory = open_inventory(self.config)
        self.status = status = StatusWiring(self.config, notifier=self._notifier)
        self.manager = manager = BackendManager(
            self.config, inventory, self.emit, health=status.healths,
            on_weights=status.weights_ready, system=self._system,
        )
        status.expected_startup_s = manager.startup_times.expected_s
        self.poller = poller = GpuPoller(inventory, manager.managed_pids, status.gpus_read)
        status.on_state_change.append(lambda _t: poller.refresh_soon())
        self.operator = operator = Operator(manager)
        token = control_token(self.config)

        def control(app: FastAPI, token: str | None = None) -> None:
            add_control_routes(app, operator, self.reload, token=token)

        await status.start_api(
            functools.partial(control, token=token) if token is not None else None
        )
        socket_app = status.app()
        control(socket_app)
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
        await manager.begin(first_read)
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
        if self.manager is not None:
            await self.manager.shutdown()
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
            if self._reloading is not None:
                self._reloading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reloading
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    # -- reload ----------------------------------------------------------------------------
    def request_reload(self) -> None:
        """SIGHUP: reload after the reload in flight (if any); never two at once."""
        previous = self._reloading

        async def chained() -> None:
            if previous is not None and not previous.done():
                with contextlib.suppress(Exception):
                    await previous
            await self.reload()

        self._reloading = asyncio.ensure_future(chained())

    async def reload(self) -> ReconcileReport | None:
        """Re-read the three files; apply them when valid (start added providers, stop removed
        ones, restart exactly those whose launch identity changed). An invalid file keeps
        everything running as it is and logs every error with file:line."""
        try:
            config = await asyncio.to_thread(
                load_config, self.config.config_dir, simulate=self.config.simulate
            )
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("config.reload_invalid", issue=str(issue))
            self._notifier.status(f"reload refused: {len(exc.issues)} configuration error(s)")
            return None
        if self.manager is None or self.status is None:
            return None
        _log_warnings(config)
        self.config = config
        self.status.reload(config)
        report = await self.manager.reconcile(config)
        self.status.prune()
        self._notifier.status(
            f"reloaded: {len(report.started)} started, {len(report.stopped)} stopped, "
            f"{len(report.restarted)} restarted"
        )
        log.info("config.reloaded", **vars(report))
        return report


def run_daemon(config: Config, *, sink: EventSink | None = None) -> int:
    """Blocking entry point for ``gpumgr daemon``.

    After an orderly shutdown, a download still in flight (huggingface_hub's own worker
    threads, which the interpreter would join at exit) is abandoned rather than waited for:
    its partial files are cleaned up by the next pull, under the repository's lock.
    """
    code = asyncio.run(Daemon(config, sink=sink).serve())
    # Daemon or not, executor workers are joined at interpreter exit (concurrent.futures' own
    # atexit hook), so any thread still running here would hold the exit up.
    busy = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if busy:
        log.info("daemon.abandoned_threads", threads=busy)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
