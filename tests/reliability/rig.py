"""What the fault scenarios share: a simulated daemon with its engines' event log, a control
client over the unix socket, a bounded client load, and the leak checks.

Built on ``gpumgr.sim.harness.DaemonHarness`` (a real ``gpumgr daemon --simulate`` subprocess with
its own directories and a run-time port). Every helper here is bounded in time; every process a
rig starts is stopped by ``Rig.close`` (callers run it in a ``finally``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psutil

from gpumgr.sim.harness import FAST_HEALTH_YAML, DaemonHarness, alive, wait_for

Json = dict[str, Any]

QWEN_7B = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
QWEN_14B = "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"
DEEPSEEK = "TheBloke/deepseek-coder-6.7B-instruct-AWQ"

WAIT_S = 60.0
"""The longest any single wait may take: engines load on a loaded 2-core CI machine too."""

LIFECYCLE_YAML = """
vllm:
  stop_timeout_s: 1
  start_timeout_s: 60
  memory_release_timeout_s: 5
  drain_timeout_s: 2
restart:
  backoff_base_s: 0.05
  backoff_cap_s: 0.2
  max_crashes: 100
simulate:
  load_seconds: 0.2
"""
"""Restarts almost at once (so 20 kills cost seconds, not minutes) and never a crash loop."""


def settings(restart_unresponsive_after_s: float = 600, extra: str = "") -> str:
    return FAST_HEALTH_YAML.format(restart_after_s=restart_unresponsive_after_s) + LIFECYCLE_YAML + extra


def vllm(name: str, port: int, repo: str, *, status: str = "active", served: str = "",
         max_model_len: int = 2048, env: dict[str, str] | None = None,
         description: str = "", fraction: float | None = None) -> str:
    """One vLLM provider; ``env`` rigs its engine (the simulated engine's chaos switches);
    ``fraction`` pins its slice (two active engines whose weights arrive in either order: see
    test_fault_planning.py for why an unpinned pair may not both start)."""
    pin = f"    gpu_memory_utilization: {fraction}\n" if fraction is not None else ""
    env_yaml = "".join(f"      {k}: \"{v}\"\n" for k, v in (env or {}).items())
    return f"""
  {name}:
    type: vllm
    base_url: http://127.0.0.1:{port}
    status: {status}
    description: "{description or name}"
    max_model_len: {max_model_len}
    max_num_seqs: 4
{pin}    models:
      - name: {served or name + "-served"}
        hf_repo: {repo}
""" + (f"    env:\n{env_yaml}" if env else "")


class Rig:
    """One daemon, the engine events file its engines append to, and a control client."""

    def __init__(self, tmp: Path, providers: str, settings_yaml: str,
                 env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.events_file = tmp / "engine-events.jsonl"
        self.daemon = DaemonHarness(tmp, "providers:" + providers, settings_yaml,
                                    env={"GPUMGR_SIM_EVENTS_FILE": str(self.events_file),
                                         **(env or {})})
        self.extra_pids: set[int] = set()
        """Processes a scenario started itself (a simulated Ollama…): killed by ``close``."""

    # -- lifecycle -------------------------------------------------------------------------
    def close(self, check_log: bool = True) -> None:
        """Kill everything this rig's daemon started or recorded, and every engine that ever
        appended to the events file (a test that failed half-way leaves nothing running)."""
        pids = {e["pid"] for e in self.engine_events()} | self.extra_pids
        for pid in pids:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.killpg(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        self.daemon.cleanup(check_log=check_log)

    # -- reading ---------------------------------------------------------------------------
    def engine_events(self) -> list[Json]:
        if not self.events_file.exists():
            return []
        out = []
        for line in self.events_file.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being appended right now
        return out

    def inits(self) -> list[Json]:
        return [e for e in self.engine_events() if e["event"] == "init_start"]

    def allocations(self) -> dict[int, int]:
        """pid → MiB on the simulated card (live processes only, as the driver reports)."""
        return {a.pid: a.used_mib for a in self.daemon.sim_gpu().read().allocations}

    def daemon_pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def daemon_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.daemon_pid()}/fd"))

    def pid_of(self, name: str) -> int:
        return int(self.daemon.backend(name)["pid"])

    # -- control over the unix socket ------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        return self.daemon.runtime_dir / "gpumgr.sock"

    def control_client(self, timeout_s: float = 60.0) -> httpx2.Client:
        transport = httpx2.HTTPTransport(uds=str(self.socket_path))
        return httpx2.Client(transport=transport, base_url="http://localhost",
                             timeout=httpx2.Timeout(timeout_s))

    def control(self, op: str, body: Json | None = None, timeout_s: float = 60.0) -> tuple[int, list[Json]]:
        """POST ``/v1/control/<op>``: the status and the NDJSON lines (or the JSON answer)."""
        with self.control_client(timeout_s) as c:
            r = c.post(f"/v1/control/{op}", json=body if body is not None else {})
            lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
            return r.status_code, lines

    def cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return self.daemon.cli(*args, timeout_s=timeout_s)

    def popen_cli(self, *args: str) -> subprocess.Popen[str]:
        return self.daemon.cli_popen(*args)


def group_gone(pgid: int) -> bool:
    """No process (zombies aside) is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return False
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return True


def dead(pid: int) -> bool:
    return not alive(pid)


def open_inits(events: list[Json]) -> Iterator[tuple[Json, Json]]:
    """Every pair (an engine's init_start, another engine's init_start that came while the first
    one's init was still open). An init closes at its ``init_end``, ``failed`` or ``exit``, or at
    the next init_start of the same pid; one that never closes (the engine was SIGKILLed while
    loading) stays open: the daemon must not start another engine before it saw that one die,
    so a kill while loading is not part of the scenarios that use this check."""
    open_: dict[int, Json] = {}
    for e in sorted(events, key=lambda x: x["t"]):
        pid = e["pid"]
        if e["event"] == "init_start":
            for other in open_.values():
                yield other, e
            open_[pid] = e
        elif e["event"] in ("init_end", "failed", "exit"):
            open_.pop(pid, None)


@dataclass
class Load:
    """Client threads sending chat completions to engine ports until stopped (bounded: each
    request has a timeout, the whole load stops after ``max_s``)."""

    targets: dict[str, tuple[int, str]]
    """backend → (port, served model name)."""
    threads_per_target: int = 1
    max_s: float = 240.0
    results: list[tuple[str, float, float, str]] = field(default_factory=list)
    """(backend, sent at (monotonic), took s, outcome: HTTP status or exception name)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for name in self.targets:
            for _ in range(self.threads_per_target):
                t = threading.Thread(target=self._client, args=(name,), daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def _client(self, name: str) -> None:
        port, served = self.targets[name]
        deadline = time.monotonic() + self.max_s
        with httpx2.Client(timeout=httpx2.Timeout(5.0)) as http:
            while not self._stop.is_set() and time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    r = http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={
                        "model": served, "max_tokens": 4,
                        "messages": [{"role": "user", "content": "hi"}]})
                    outcome = str(r.status_code)
                except httpx2.HTTPError as exc:
                    outcome = type(exc).__name__
                self.results.append((name, t0, time.monotonic() - t0, outcome))
                self._stop.wait(max(0.0, 0.03 - (time.monotonic() - t0)))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def since(self, t: float, name: str | None = None) -> list[tuple[str, float, float, str]]:
        return [r for r in list(self.results) if r[1] >= t and (name is None or r[0] == name)]

    def ok_after(self, t: float, name: str) -> bool:
        return any(o == "200" for _, t0, _, o in self.since(t, name) if t0 >= t)


def wait_new_pid_up(rig: Rig, name: str, not_pid: int, timeout_s: float = WAIT_S) -> int:
    b = rig.daemon.wait_backend(
        name, lambda b: b["state"] == "up" and b["available"] and b.get("pid") not in (None, not_pid),
        timeout_s, f"{name} up again with a new pid",
    )  # fmt: skip
    return int(b["pid"])


__all__ = ["DEEPSEEK", "QWEN_14B", "QWEN_7B", "WAIT_S", "Load", "Rig", "dead", "group_gone",
           "open_inits", "settings", "vllm", "wait_for", "wait_new_pid_up"]
