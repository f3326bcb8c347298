"""``gpumgr demo``: the whole system on a simulated GPU, for a newcomer to watch.

Copies the example configuration into a scratch workspace with free ports, starts a simulated
Ollama, runs the real daemon (``gpumgr daemon --simulate``) as a child process, shows the status
document live while models come up, sends one chat request through a vLLM backend, then stops
everything. Nothing here is used by the daemon itself; it only drives it from outside, as an
operator would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import yaml
from rich.console import Console
from rich.live import Live

from gpumgr.cli.status import render_table
from gpumgr.errors import GpumgrError
from gpumgr.sim.ollama_process import SimOllamaProcess, start_sim_ollama

SETTLED = {"up", "failed", "down", "auth_failed", "rate_limited", "disabled", "stopped"}
SLEEP_PARTNER = "qwen-14b"
"""In the demo's copy of the example, this provider gets its own port and ``swap_mode: sleep``."""
SWAPS = (("qwen-7b", "qwen-14b", "a restart swap: the 7B is drained and stopped, the 14B starts"),
         ("qwen-14b", "qwen-7b", "a sleep-mode swap: the 14B sleeps (weights to host RAM)"),
         ("qwen-7b", "qwen-14b", "and back: the 14B is woken, same process, no cold start"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DemoWorkspace:
    root: Path
    config_dir: Path
    listen: str
    ports: dict[int, int] = field(default_factory=dict)

    def env(self, load_seconds: float) -> dict[str, str]:
        """The environment of the demo's daemon and CLI calls: none of the caller's
        ``GPUMGR_*`` variables, so the workspace's ``gpumgr.yaml`` alone decides where things
        are (what an operator's ``GPUMGR_CONFIG_DIR`` relies on too)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMGR_")}
        env["GPUMGR_SIM_LOAD_SECONDS"] = f"{load_seconds:g}"
        return env

    def cli_hint(self) -> str:
        """How to point the CLI at this demo from another terminal: one variable."""
        return f"export GPUMGR_CONFIG_DIR={self.config_dir}"


def prepare_workspace(example_dir: Path, root: Path, ollama_port: int) -> DemoWorkspace:
    """The example configuration with every local port moved to a free one."""
    cfg_dir = root / "config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    if (example_dir / "model-mappings.yaml").exists():
        shutil.copy(example_dir / "model-mappings.yaml", cfg_dir / "model-mappings.yaml")
    listen = f"127.0.0.1:{free_port()}"
    write_settings(example_dir / "gpumgr.yaml", cfg_dir / "gpumgr.yaml", root, listen)
    data = yaml.safe_load((example_dir / "providers.yaml").read_text())
    ports: dict[int, int] = {}
    sleeper = data.get("providers", {}).get(SLEEP_PARTNER)
    for p in data.get("providers", {}).values():
        url = p.get("base_url") or ""
        if p.get("type") == "ollama":
            p["base_url"] = f"http://127.0.0.1:{ollama_port}"
        elif p.get("type") == "vllm" and url.startswith("http://127.0.0.1:"):
            old = int(url.rsplit(":", 1)[1].split("/")[0])
            ports.setdefault(old, free_port())  # swap partners keep sharing one port
            p["base_url"] = f"http://127.0.0.1:{ports[old]}"
    if sleeper is not None:  # to show a sleep-mode swap: its own port, so it can sleep beside
        sleeper["base_url"] = f"http://127.0.0.1:{free_port()}"
        sleeper["swap_mode"] = "sleep"
    (cfg_dir / "providers.yaml").write_text(
        "# Demo copy of the example registry, local ports moved to free ones.\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    return DemoWorkspace(root, cfg_dir, listen, ports)


def write_settings(example: Path, target: Path, root: Path, listen: str) -> None:
    """The example's ``gpumgr.yaml`` with the workspace's directories, its listener and
    ``simulate.enabled``: the config directory alone then points any ``gpumgr`` command
    (status, swap, logs, gpus, plan) at the demo's simulated box."""
    data: dict[str, Any] = {}
    if example.exists():
        data = yaml.safe_load(example.read_text()) or {}
    data.update(listen=listen, runtime_dir=str(root / "run"), state_dir=str(root / "state"),
                log_dir=str(root / "log"), cache_dir=str(root / "cache"))
    data.setdefault("simulate", {})["enabled"] = True
    target.write_text("# Demo copy of the example settings: this workspace's directories and "
                      "listener, simulated.\n" + yaml.safe_dump(data, sort_keys=False))


@contextmanager
def running_daemon(ws: DemoWorkspace, load_seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    log = open(ws.root / "daemon.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpumgr.cli", "daemon", "--simulate", "--config-dir", str(ws.config_dir)],
        env=ws.env(load_seconds), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C reaches the demo, which stops the daemon in order
    )
    try:
        yield proc
    finally:
        with sigint_ignored():  # a second Ctrl-C must not leave the daemon half-stopped
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        log.close()


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ctrl-C ignored for the duration (the shutdown it would interrupt is what it asked for)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _status(url: str) -> dict[str, Any] | None:
    try:
        return dict(httpx2.get(url, timeout=2).json())
    except (httpx2.HTTPError, ValueError):
        return None


def _settled(doc: dict[str, Any]) -> bool:
    return all(b["state"] in SETTLED for b in doc["backends"]) and any(
        b["managed"] and b["state"] != "stopped" for b in doc["backends"]
    )


def sample_chat(doc: dict[str, Any]) -> tuple[str, str] | None:
    """Send one chat request to the first vLLM backend that is up; (model, answer)."""
    for b in doc["backends"]:
        if b["type"] == "vllm" and b["available"]:
            model = b["models"][0]
            resp = httpx2.post(
                f"{b['base_url']}/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "Say hello."}],
                      "max_tokens": 16},
                timeout=10,
            )
            return model, str(resp.json()["choices"][0]["message"]["content"])
    return None


def run_demo(example_dir: Path, *, workdir: Path | None, load_seconds: float, follow: bool,
             timeout_s: float, console: Console) -> int:
    """The demo; 0 when every step worked, or when Ctrl-C ended it (everything stopped)."""
    root = workdir or Path(tempfile.mkdtemp(prefix="gpumgr-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    result = 1
    ollama: SimOllamaProcess | None = None
    try:
        ollama = start_sim_ollama(
            ["qwen2.5-coder:7b", "llama3.1:latest"],
            env={**os.environ, "GPUMGR_SIM_GPU_STATE": str(root / "run" / "sim-gpu.json")},
            new_session=True,  # Ctrl-C reaches the demo only; it stops Ollama last
        )
        ws = prepare_workspace(example_dir, root, ollama.port)
        console.print(f"[bold]gpumgr demo[/] workspace {root} (logs in {root / 'log'})")
        console.print(f"simulated Ollama on {ollama.base_url}; status on http://{ws.listen}/v1/status")
        if follow:
            _print_cli_hint(console, ws)
        url = f"http://{ws.listen}/v1/status"
        view = DemoView(console)
        with running_daemon(ws, load_seconds) as daemon:
            doc = view.watch(url, daemon, follow=False, timeout_s=timeout_s)
            if doc is None:
                console.print(f"[red]the daemon exited early[/]; see {root / 'daemon.log'}")
                return 1
            answer = sample_chat(doc)
            if answer:
                console.print(f"request to [bold]{answer[0]}[/] answered: {answer[1]!r}")
            swapped = run_swaps(ws, load_seconds, console, url, doc)
            if follow:
                console.print("\n[bold]following until Ctrl-C[/]")
                _print_cli_hint(console, ws)
                console.print("then `gpumgr status --watch`, `gpumgr swap qwen-14b qwen-7b`, "
                              "`gpumgr logs qwen-7b`, `gpumgr gpus`", highlight=False)
                if view.watch(url, daemon, follow=True, timeout_s=None) is None:
                    console.print(f"[red]the daemon exited[/]; see {root / 'daemon.log'}")
                    return 1
            console.print("stopping the daemon (SIGTERM: every engine is stopped, none left behind)")
        console.print(f"daemon exited with status {daemon.returncode}")
        ok = daemon.returncode == 0 and swapped and all(
            b["available"] for b in doc["backends"] if b["managed"] and b["state"] != "stopped"
        )
        result = 0 if ok else 1
        return result
    except KeyboardInterrupt:  # Ctrl-C: the daemon (and its engines) stopped on the way out
        console.print("interrupted: the daemon and its engines are stopped")
        result = 0
        return result
    finally:
        with sigint_ignored():
            if ollama is not None:
                ollama.stop()
            if workdir is None:  # our scratch workspace: removed on exit, kept when it failed
                if result == 0:
                    shutil.rmtree(root, ignore_errors=True)
                else:
                    console.print(f"workspace kept for inspection: {root}")


def _print_cli_hint(console: Console, ws: DemoWorkspace) -> None:
    """The one line that points the CLI at this demo, never broken (copied as it is)."""
    console.print("the CLI, from another terminal:")
    console.print(f"  {ws.cli_hint()}", soft_wrap=True, highlight=False, style="bold")


def run_swaps(ws: DemoWorkspace, load_seconds: float, console: Console, url: str,
              doc: dict[str, Any]) -> bool:
    """``gpumgr swap`` as an operator runs it, three times, with its progress; True if all
    succeeded (skipped when the example has no such pair of providers)."""
    names = {b["name"] for b in doc["backends"]}
    if not {"qwen-7b", SLEEP_PARTNER} <= names:
        return True
    for old, new, what in SWAPS:
        console.print(f"\n[bold]gpumgr swap {old} {new}[/]  ({what})")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpumgr.cli", "swap", old, new, "--config-dir",
             str(ws.config_dir)],
            env=ws.env(load_seconds), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            console.print(f"  {line.rstrip()}", highlight=False)
        if proc.wait() != 0:
            return False
        now = _status(url)
        if now is not None:
            console.print(render_table(now, console.width))
    return True


class DemoView:
    """What the newcomer sees while the daemon works: on a terminal the live status table, at
    the terminal's width; into a pipe a line per state change, then the table once."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seen: dict[str, str] = {}
        self.t0 = time.monotonic()

    def watch(self, url: str, daemon: subprocess.Popen[bytes], *, follow: bool,
              timeout_s: float | None) -> dict[str, Any] | None:
        """Show the status until it settles (``follow``: until Ctrl-C, which propagates as
        ``KeyboardInterrupt``); the last document, or None when the daemon exited."""
        console = self.console
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last: dict[str, Any] | None = None

        def step() -> bool:
            nonlocal last
            if daemon.poll() is not None:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            doc = _status(url)
            if doc is None:
                return True
            last = doc
            for b in doc["backends"]:
                if self.seen.get(b["name"]) != b["state"]:
                    if not console.is_terminal:
                        console.print(
                            f"{time.monotonic() - self.t0:6.1f}s {b['name']}: "
                            f"{self.seen.get(b['name'], '-')} -> {b['state']}"
                            + (f" ({b['detail']})" if b.get("detail") else ""),
                            highlight=False,
                        )
                    self.seen[b["name"]] = b["state"]
            return follow or not _settled(doc)

        if console.is_terminal:
            with Live(console=console, refresh_per_second=4) as live:
                while step():
                    if last:
                        live.update(render_table(last, console.width))
                    time.sleep(0.25)
                if last:
                    live.update(render_table(last, console.width))
        else:
            while step():
                time.sleep(0.25)
            if last:
                console.print(render_table(last, console.width))
        if daemon.poll() is not None:
            return None
        if last is None:
            raise GpumgrError("the daemon's status API never answered")
        return last
