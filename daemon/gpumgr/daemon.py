"""The daemon's composition root: configuration, weights, adoption, keepers, signals.

Minimal for now (issue 5): it pulls missing weights, adopts the children an earlier daemon left
serving, starts the ``active`` vLLM providers one at a time per GPU, keeps them alive, and on
SIGTERM/SIGINT stops every child it owns and exits 0. With simulation on, the GPU, the engine
and the hub are the simulated ones; the code paths are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TypeVar

import structlog

from gpumgr.actions.adopt import adopt_recorded
from gpumgr.actions.keeper import BackendKeeper
from gpumgr.actions.ollama_room import OllamaRoom
from gpumgr.actions.prepare import LaunchPlanner
from gpumgr.actions.start import GpuLocks, StartContext, StartTiming
from gpumgr.backend_state import BackendState
from gpumgr.config import Config, ConfigError, load_config
from gpumgr.config.registry import Provider, ProviderStatus
from gpumgr.engines.vllm_log import is_oom, vllm_last_error
from gpumgr.errors import GpumgrError
from gpumgr.gpu import GpuBackend
from gpumgr.monitor import Monitor
from gpumgr.sd_notify import Notifier
from gpumgr.sim import SIM_ENGINE_COMMAND
from gpumgr.sim.gpu import STATE_ENV
from gpumgr.supervisor import process
from gpumgr.supervisor.events import BackendFailed, EventSink, SupervisorEvent
from gpumgr.supervisor.records import ChildRecords
from gpumgr.supervisor.restart import RestartPolicy
from gpumgr.weights import DownloadProgress, Snapshot

log = structlog.get_logger(__name__)

T = TypeVar("T")

SIM_LOAD_ENV = "GPUMGR_SIM_LOAD_SECONDS"


def _log_event(event: SupervisorEvent) -> None:
    log.info("supervisor.event", kind=type(event).__name__, **vars(event))


class Daemon:
    """One daemon's live objects. ``start()`` then ``shutdown()``; ``serve()`` does both around
    the signals. ``keepers`` is what status and control (later issues) read and act through."""

    def __init__(self, config: Config, *, sink: EventSink | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self.paths = config.paths
        self.simulate = config.simulate
        self._sinks: list[EventSink] = [_log_event] + ([sink] if sink else [])
        self.records = ChildRecords(self.paths.state_dir)
        self.keepers: dict[str, BackendKeeper] = {}
        self.failed: dict[str, str] = {}
        """Backends that could not even be prepared (weights), with the reason."""
        self.inventory: GpuBackend | None = None
        self.monitor: Monitor | None = None
        self._locks = GpuLocks()
        self._notifier = Notifier()
        self._background: set[asyncio.Task[object]] = set()

    def emit(self, event: SupervisorEvent) -> None:
        for sink in self._sinks:
            sink(event)

    @property
    def wanted(self) -> list[Provider]:
        """The vLLM providers meant to run: ``status: active``, in the registry's order."""
        return [
            p for p in self.config.providers.values()
            if p.is_vllm and p.status is ProviderStatus.ACTIVE
        ]

    # -- start -----------------------------------------------------------------------------
    def _prepare_environment(self) -> GpuBackend:
        for d in (self.paths.runtime_dir, self.paths.state_dir, self.paths.log_dir,
                  self.paths.cache_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not self.simulate:
            from gpumgr.gpu.nvml import NvmlBackend

            return NvmlBackend()
        from gpumgr.gpu.simulated import SimulatedBackend, sim_state_path

        backend = SimulatedBackend.from_settings(self.settings, self.paths.runtime_dir)
        os.environ[STATE_ENV] = str(sim_state_path(self.paths.runtime_dir))
        load_s = self.settings.simulate.load_seconds
        if load_s is not None:
            os.environ.setdefault(SIM_LOAD_ENV, f"{load_s:g}")
        return backend

    def _resolve_weights(
        self,
        providers: list[Provider],
        progress: Callable[[str, DownloadProgress], None],
        local_only: bool = False,
    ) -> dict[str, Snapshot]:
        """Local snapshots, pulling what is missing (from the simulated hub when simulating);
        ``local_only``: what is on disk, nothing fetched."""
        from gpumgr.sim.hub import hub_endpoint
        from gpumgr.weights import WeightsContext

        found: dict[str, Snapshot] = {}
        with contextlib.ExitStack() as stack:
            endpoint = (
                stack.enter_context(hub_endpoint(self.settings.simulate.hub_endpoint))
                if self.simulate
                else None
            )
            weights = WeightsContext.from_config(self.config, endpoint=endpoint)
            for p in providers:
                if local_only:
                    local = weights.local(p)
                    if local is not None:
                        found[p.name] = local
                    continue
                try:
                    snap = weights.local(p) or weights.resolve(
                        p, progress=functools.partial(progress, p.name)
                    )
                except GpumgrError as exc:
                    self.failed[p.name] = str(exc)
                    log.error("weights.failed", backend=p.name, error=str(exc))
                    continue
                found[p.name] = snap
                log.info("weights.ready", backend=p.name, repo=snap.repo, commit=snap.commit)
        return found

    def _managed_pids(self) -> Mapping[int, str]:
        return {k.child.pid: name for name, k in self.keepers.items() if k.child is not None}

    async def start(self) -> None:
        """Everything up to the keepers running; returns without waiting for engines."""
        self.inventory = self._prepare_environment()
        first_read = self.inventory.read()
        self.monitor = Monitor(
            self.config,
            self.inventory,
            managed_pids=self._managed_pids,
            on_unresponsive=self._restart_unresponsive,
            notifier=self._notifier,
        )
        self._sinks.append(self.monitor.supervisor_sink)
        await self.monitor.start()
        wanted = self.wanted
        # Without a readable GPU (no driver, or a driver/library mismatch after an upgrade)
        # nothing new can be planned or started, but engines that are serving keep serving:
        # they are adopted, and Ollama, the cloud and the rest are watched and published.
        gpu_error = None if first_read.available else (first_read.error or "GPU unavailable")
        if gpu_error:
            log.error("gpu.unavailable", error=gpu_error)
        gpus = {g.index: g.uuid for g in first_read.gpus}
        loop = asyncio.get_running_loop()
        monitor = self.monitor

        def progress(name: str, ev: DownloadProgress) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while a download ran on
                loop.call_soon_threadsafe(monitor.downloading, name, ev.detail())

        # A daemon thread, not the default executor: SIGTERM during a 9 GB download must not wait
        # for it (asyncio.run joins executor threads); the next pull cleans up its partial files.
        resolved = await run_in_daemon_thread(
            self._resolve_weights, wanted, progress, gpu_error is not None
        )
        for name, snap in resolved.items():
            monitor.publisher.update_backend(name, weights_commit=snap.commit)
        snapshots = {name: snap.path for name, snap in resolved.items()}
        for name, reason in self.failed.items():
            self.emit(BackendFailed(name, reason))
        runnable = [p for p in wanted if p.name in snapshots]

        # Desired state decides what is adopted, not whether its weights are found on disk now:
        # a serving engine of an active provider is never stopped for a missing snapshot.
        adoption = adopt_recorded(self.records, {p.name for p in wanted}, self.paths.log_dir)
        vllm = self.settings.vllm
        for child in adoption.unwanted:
            await process.stop(
                child, term_timeout_s=vllm.stop_timeout_s,
                memory_released=self._memory_released,
                memory_timeout_s=vllm.memory_release_timeout_s,
            )
            self.records.remove(child.backend)

        planner = LaunchPlanner(
            providers=runnable,
            settings=self.settings,
            inventory=self.inventory,
            snapshots=snapshots,
            managed=self._managed_pids,
            command=SIM_ENGINE_COMMAND if self.simulate else None,
            withheld_env={p.env_var for p in self.config.providers.values() if p.env_var},
            running_fractions=self._running_fractions,
            ollama=OllamaRoom(list(self.config.providers.values())),
        )
        ctx = StartContext(
            log_dir=self.paths.log_dir,
            records=self.records,
            locks=self._locks,
            sink=self.emit,
            is_oom=is_oom,
            last_error=vllm_last_error,
            timing=StartTiming(
                start_timeout_s=vllm.start_timeout_s, poll_s=self.settings.health.starting_poll_s
            ),
            log_max_bytes=vllm.log_max_bytes,
            log_backups=vllm.log_backups,
        )
        policy = RestartPolicy.from_settings(self.settings.restart)
        for p in wanted:
            record = adoption.records.get(p.name)
            if gpu_error is not None and record is None:
                self.failed[p.name] = gpu_error
                self.emit(BackendFailed(p.name, gpu_error))
                continue
            if p.name not in snapshots and record is None:
                continue  # its weights failed (reported above)
            gpu_uuid = (record.gpu_uuid if record is not None else None) or gpus.get(p.gpu)
            if gpu_uuid is None:
                self.failed[p.name] = f"GPU {p.gpu} not found ({len(gpus)} card(s))"
                self.emit(BackendFailed(p.name, self.failed[p.name]))
                continue
            assert p.port is not None  # the config loader requires a port for vLLM
            keeper = BackendKeeper(
                p.name,
                gpu_uuid,
                p.port,
                planner.preparer(p),
                ctx,
                policy,
                stop_timeout_s=vllm.stop_timeout_s,
                memory_released=self._memory_released,
                memory_timeout_s=vllm.memory_release_timeout_s,
            )
            self.keepers[p.name] = keeper
            keeper.launch(  # the GPU lock orders the starts
                adoption.adopted.get(p.name), record.fraction if record is not None else None
            )
        log.info("daemon.started", backends=list(self.keepers), adopted=list(adoption.adopted),
                 simulated=self.simulate)

    def _running_fractions(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, keeper in self.keepers.items():
            fraction = keeper.running_fraction
            if fraction is not None:
                out[name] = fraction
        return out

    def _restart_unresponsive(self, backend: str, reason: str) -> bool:
        keeper = self.keepers.get(backend)
        if keeper is None or keeper.child is None or keeper.child.exited:
            return False
        if keeper.state not in (BackendState.UP, BackendState.STARTING):
            return False  # already restarting or stopping; ask again if it stays down
        task: asyncio.Task[object] = asyncio.ensure_future(keeper.restart_unresponsive(reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    async def _memory_released(self, pids: frozenset[int]) -> bool:
        assert self.inventory is not None
        inv = await asyncio.to_thread(self.inventory.read)
        if not inv.available:
            return True  # nothing to wait for that we could see
        return not any(p.pid in pids for g in inv.gpus for p in g.processes)

    # -- stop ------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop every child (all at once: each waits for its own group and memory)."""
        self._notifier.stopping()
        await asyncio.gather(*(k.stop() for k in self.keepers.values()))
        if self.monitor is not None:
            await self.monitor.stop()
        log.info("daemon.stopped", backends=list(self.keepers))

    async def serve(self) -> int:
        """Run until SIGTERM or SIGINT; then stop every child and return 0."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.check_reload)
        try:
            starting = asyncio.ensure_future(self.start())
            waiter = asyncio.ensure_future(stop.wait())
            await asyncio.wait({starting, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a configuration or GPU error ends the daemon here
                await waiter
            else:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        finally:
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    def check_reload(self) -> bool:
        """SIGHUP (``systemctl reload``): re-read the three files and say whether they are valid.

        Applying a changed registry to running backends belongs with start/stop/swap control
        (a later issue); until then the running configuration stays, and a reload never takes
        a model down or kills the daemon, whatever the files say.
        """
        try:
            load_config(self.config.config_dir, simulate=self.config.simulate)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("config.reload_invalid", issue=str(issue))
            self._notifier.status(f"reload refused: {len(exc.issues)} configuration error(s)")
            return False
        log.warning(
            "config.reload_valid",
            detail="the configuration is valid; applying changes to running backends is not "
            "supported yet, the running configuration stays",
        )
        return True


async def run_in_daemon_thread(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a daemon thread, awaited; abandoned (not joined) if the caller is cancelled."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            outcome: tuple[T | None, BaseException | None] = (fn(*args), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(deliver, *outcome)

    threading.Thread(target=work, name=f"gpumgr:{getattr(fn, '__name__', 'work')}", daemon=True).start()
    return await future


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
