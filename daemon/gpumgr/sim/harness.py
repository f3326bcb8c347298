"""A simulated ``gpumgr daemon`` as a real subprocess, for end-to-end tests and benchmarks.

``DaemonHarness`` writes a config directory in a temporary folder, runs
``python -m gpumgr.cli daemon --simulate --config-dir …`` with its own runtime/state/log/cache
directories and a status listener on a port the kernel picks (read back from the daemon's
``daemon.ready`` log event), and reads what the daemon publishes: ``/v1/status``,
``status.json`` and, through ``SseRecorder``, ``/v1/events`` with the arrival time of every
frame. ``cleanup()`` kills whatever is left (daemon, recorded engines' process groups); callers
run it in a ``finally``. It lives in the package, beside the simulators it drives, because the
tests and the benchmarks (``bench/``) both use it; the daemon itself never imports it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx2
import psutil

from gpumgr.sim.gpu import SimGpuSpec, SimGpuState, sim_uuid
from gpumgr.sse import SseComment, SseMessage, SseParser

Json = dict[str, Any]

FAST_HEALTH_YAML = """
health:
  interval_s: 0.2
  timeout_s: 0.2
  retry_attempts: 2
  jitter_s: 0.05
  starting_poll_s: 0.1
  cloud_interval_s: 0.3
  restart_unresponsive_after_s: {restart_after_s}
"""
"""Short health intervals for tests (the daemon's defaults are 2 s / 1 s / 3 attempts)."""

FAST_LIFECYCLE_YAML = """
vllm:
  stop_timeout_s: 1
  start_timeout_s: 60
  memory_release_timeout_s: 5
restart:
  backoff_base_s: 0.2
  backoff_cap_s: 1
  max_crashes: 50
simulate:
  load_seconds: 0.2
"""
"""Fast engine starts and restarts; ``max_crashes`` high so repeated kills never end in ``failed``."""


def vllm_provider_yaml(name: str, port: int, *, served: str = "qwen-coder-vllm",
                       repo: str = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ") -> str:
    """One active vLLM provider on ``port`` (the simulated hub serves ``repo``)."""
    return f"""
  {name}:
    type: vllm
    base_url: http://127.0.0.1:{port}
    status: active
    max_model_len: 4096
    max_num_seqs: 4
    models:
      - name: {served}
        hf_repo: {repo}
"""


DAEMON_LOG_DEFECTS = ("backend.illegal_transition", "keeper.crashed", "health.callback_failed",
                      "backend.unknown")
"""Log events that mean the daemon lost track of something: any of them fails an end-to-end test."""


def assert_clean_daemon_log(text: str, where: str = "daemon log") -> None:
    """Fail when the daemon logged an illegal transition, a crashed keeper or a failed callback
    (each a bookkeeping bug the daemon survives, so only its log shows it)."""
    bad = [line for line in text.splitlines() if any(d in line for d in DAEMON_LOG_DEFECTS)]
    assert not bad, f"{where} shows {len(bad)} defect(s):\n" + "\n".join(bad[:10])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "",
             poll_s: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def sim_gpu_path(tmp: Path) -> Path:
    """Where a harness on ``tmp`` keeps the simulated GPU (``$GPUMGR_SIM_GPU_STATE``)."""
    return tmp / "runtime" / "sim-gpu.json"


def create_sim_gpu(tmp: Path) -> str:
    """Create the simulated card of a harness on ``tmp`` before its daemon does, so that a
    simulated Ollama started first can register memory on it; returns the card's UUID. The
    card is the daemon's default (``simulate.gpus``): a 16 GiB Quadro RTX 5000."""
    uuid = sim_uuid(0)
    SimGpuState(sim_gpu_path(tmp)).ensure([
        SimGpuSpec(index=0, uuid=uuid, name="Quadro RTX 5000", memory_total_mib=16384,
                   display_used_mib=300, compute_capability="7.5")
    ])
    return uuid


class SseRecorder:
    """Reads ``/v1/events`` in a thread; keeps every backend frame with its arrival time.

    The stream ends when the daemon stops (the publisher closes it), which ends the thread.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.frames: list[tuple[float, Json]] = []
        self.ids: list[str | None] = []
        """Each frame's SSE id (``epoch:seq``), in the order of ``frames``."""
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sse-recorder", daemon=True)

    def start(self, timeout_s: float = 10.0) -> SseRecorder:
        self._thread.start()
        if not self._connected.wait(timeout_s):
            raise AssertionError(f"SSE stream {self.url} did not open: {self.error!r}")
        return self

    def _run(self) -> None:
        try:
            timeout = httpx2.Timeout(5.0, read=None)
            with httpx2.stream("GET", self.url, timeout=timeout) as r:
                r.raise_for_status()
                parser = SseParser()
                for chunk in r.iter_bytes():
                    for item in parser.feed(chunk):
                        if isinstance(item, SseComment):
                            self._connected.set()  # ": connected", heartbeats
                        elif isinstance(item, SseMessage):
                            frame = json.loads(item.data)
                            with self._cond:
                                self.frames.append((time.monotonic(), frame))
                                self.ids.append(item.id)
                                self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported to the reader, not raised here
            self.error = exc
            self._connected.set()

    def first(self, predicate: Callable[[Json], bool], *, after: float = 0.0,
              timeout_s: float = 10.0) -> tuple[float, Json] | None:
        """The first frame that arrived at or after ``after`` (monotonic) and matches."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for t, frame in self.frames:
                    if t >= after and predicate(frame):
                        return t, frame
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return None
                self._cond.wait(min(left, 0.1))

    def text(self) -> str:
        with self._cond:
            return "\n".join(json.dumps(f) for _, f in self.frames)

    def join(self, timeout_s: float = 5.0) -> None:
        self._thread.join(timeout_s)


class DaemonHarness:
    """One daemon's directories, config, environment and process."""

    def __init__(self, tmp: Path, providers_yaml: str, settings_yaml: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.tmp = tmp
        self.config_dir = tmp / "config"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "providers.yaml").write_text(providers_yaml)
        (self.config_dir / "gpumgr.yaml").write_text(settings_yaml)
        self.runtime_dir = tmp / "runtime"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMGR_")}
        for name in ("runtime", "state", "log", "cache"):
            self.env[f"GPUMGR_{name.upper()}_DIR"] = str(tmp / name)
        self.env["GPUMGR_LISTEN"] = "127.0.0.1:0"
        self.env["GPUMGR_SIM_GPU_STATE"] = str(self.sim_gpu_path)
        self.env.update(env or {})
        self.log_path = tmp / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.engine_pids: set[int] = set()
        """Every engine pid seen in the status document (checked dead after the daemon stops)."""

    # -- paths -----------------------------------------------------------------------------
    @property
    def sim_gpu_path(self) -> Path:
        return sim_gpu_path(self.tmp)

    @property
    def status_path(self) -> Path:
        return self.runtime_dir / "status.json"

    def sim_gpu(self) -> SimGpuState:
        return SimGpuState(self.sim_gpu_path)


    # -- process ---------------------------------------------------------------------------
    def start(self, ready_timeout_s: float = 60.0) -> None:
        """Start the daemon and wait until its status API listens (``daemon.ready``). A second
        start (after a crash) reads only what the new daemon logs."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gpumgr.cli", "daemon", "--simulate",
                 "--config-dir", str(self.config_dir)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

        def ready() -> str | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            for e in self.events(offset):
                if e.get("event") == "daemon.ready":
                    return str(e["listen"])
            return None

        listen = wait_for(ready, ready_timeout_s, "daemon.ready", poll_s=0.05)
        self.base_url = f"http://{listen}"

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then the exit status (SIGKILL and an AssertionError past the timeout)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon ignored SIGTERM for {timeout_s:g} s") from None

    def recorded_pids(self) -> list[int]:
        path = self.tmp / "state" / "children.json"
        if not path.exists():
            return []
        return [int(c["pid"]) for c in json.loads(path.read_text())["children"]]

    def cleanup(self, check_log: bool = True) -> None:
        """Kill what is left: the daemon and every engine group it recorded or published; then
        fail if the daemon's log shows a defect (``assert_clean_daemon_log``)."""
        pids = set(self.recorded_pids()) | self.engine_pids
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in pids:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.killpg(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        if check_log:
            assert_clean_daemon_log(self.log_text())

    # -- the CLI, as an operator runs it against this daemon ---------------------------------
    def cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """``gpumgr ARGS --config-dir …`` with this daemon's environment; waits for it."""
        return subprocess.run(
            [sys.executable, "-m", "gpumgr.cli", *args, "--config-dir", str(self.config_dir)],
            env=self.env, capture_output=True, text=True, timeout=timeout_s,
        )

    def cli_popen(self, *args: str) -> subprocess.Popen[str]:
        """The same, started and not waited for (its stdout and stderr piped)."""
        return subprocess.Popen(
            [sys.executable, "-m", "gpumgr.cli", *args, "--config-dir", str(self.config_dir)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    # -- reading ---------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, offset: int = 0) -> list[Json]:
        out = []
        for line in self.log_text()[offset:].splitlines():
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def get(self, path: str, timeout_s: float = 10.0) -> httpx2.Response:
        return httpx2.get(self.base_url + path, timeout=timeout_s)

    def status(self) -> Json:
        doc: Json = self.get("/v1/status").json()
        for b in doc["backends"]:
            if b.get("type") == "vllm" and b.get("pid"):
                self.engine_pids.add(int(b["pid"]))
        return doc

    def status_file(self) -> Json | None:
        """``status.json``, or None while it does not exist yet."""
        try:
            doc: Json = json.loads(self.status_path.read_text())
        except FileNotFoundError:
            return None
        return doc

    def backend(self, name: str, doc: Json | None = None) -> Json:
        doc = self.status() if doc is None else doc
        for b in doc["backends"]:
            if b["name"] == name:
                return dict(b)
        raise KeyError(name)

    def wait_backend(self, name: str, predicate: Callable[[Json], bool], timeout_s: float = 30.0,
                     what: str = "") -> Json:
        """Poll ``/v1/status`` until backend ``name`` matches; returns that backend object."""

        def check() -> Json | None:
            b = self.backend(name)
            return b if predicate(b) else None

        return wait_for(check, timeout_s, what or f"{name} to match", poll_s=0.02)  # type: ignore[no-any-return]

    def wait_up(self, name: str, timeout_s: float = 30.0) -> Json:
        return self.wait_backend(
            name, lambda b: b["state"] == "up" and b["available"] and bool(b.get("pid")), timeout_s,
            f"{name} up with a pid",
        )

    def wait_keeper_ready(self, pid: int, timeout_s: float = 30.0) -> None:
        """Wait until the supervisor itself saw engine ``pid`` ready (``ChildReady``). The health
        probe may publish ``up`` a moment earlier; the keeper acts on a hang only after this."""
        wait_for(
            lambda: any(e.get("kind") == "ChildReady" and e.get("pid") == pid for e in self.events()),
            timeout_s, f"ChildReady of pid {pid}", poll_s=0.05,
        )  # fmt: skip

    def sse(self) -> SseRecorder:
        return SseRecorder(self.base_url + "/v1/events").start()
