"""Start and stop a simulated Ollama process (tests, benchmarks, ``gpumgr demo``).

The process binds port 0 and reports its port on its first stdout line, so callers never race
for a port; ``stop()`` always reaps it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class SimOllamaProcess:
    proc: subprocess.Popen[str]
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def set_mode(self, mode: str) -> None:
        """Switch to ``ok``, ``down`` (503) or ``hang`` (never answers) at run time."""
        req = urllib.request.Request(
            self.base_url + "/_sim/mode",
            data=json.dumps({"mode": mode}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a SIGSTOPped test process must see SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_sim_ollama(
    pulled: Sequence[str] = (),
    *,
    loaded: Sequence[str] = (),
    sizes_mib: Mapping[str, int] | None = None,
    mode: str = "ok",
    token_delay_s: float = 0.0,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 15.0,
    new_session: bool = False,
) -> SimOllamaProcess:
    """``new_session``: out of the caller's process group (a Ctrl-C in its terminal does not
    reach it; the caller stops it)."""
    argv = [sys.executable, "-m", "gpumgr.sim.ollama", "--port", "0", "--mode", mode,
            "--token-delay-s", str(token_delay_s)]
    if pulled:
        argv += ["--pulled", ",".join(pulled)]
    if loaded:
        argv += ["--loaded", ",".join(loaded)]
    for name, mib in (sizes_mib or {}).items():
        argv += ["--size", f"{name}={mib}"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        start_new_session=new_session,
    )
    deadline = time.monotonic() + ready_timeout_s
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                line = proc.stdout.readline()
                if not line:
                    break  # exited before binding
                doc = json.loads(line)
                if doc.get("event") == "listening":
                    return SimOllamaProcess(proc, int(doc["port"]))
    finally:
        sel.close()
    SimOllamaProcess(proc, 0).stop()
    raise RuntimeError(f"simulated Ollama did not start (exit {proc.returncode})")


@contextmanager
def running_sim_ollama(pulled: Sequence[str] = (), **kwargs: object) -> Iterator[SimOllamaProcess]:
    sim = start_sim_ollama(pulled, **kwargs)  # type: ignore[arg-type]
    try:
        yield sim
    finally:
        sim.stop()
