"""Benchmark of a model swap on the simulated GPU: gpumgr (restart mode and sleep mode) against
the shell script it replaces. Not a test.

For each way, the 7B and the 14B are swapped back and forth ``--repeats`` times while client
threads send chat requests (``--rate`` per second in all) to the model that should serve:

- ``gpumgr restart``: both providers on one port (the reference box's swap partners); the 7B is
  drained, stopped, its memory awaited, the 14B started (``gpumgr swap``).
- ``gpumgr sleep``: each on its own port with ``swap_mode: sleep``; after the first cold start,
  a swap sleeps one engine and wakes the other. The clients follow ``/v1/status`` (as the
  LiteLLM callback does) to pick the port of the model that is ``up``.
- ``old script``: no daemon; the engine is killed by name (``pkill -f``), then a fixed
  ``--script-sleep``, the other engine started with a fixed ``--gpu-memory-utilization 0.85``,
  and ``/v1/models`` polled every 2 s; the clients send to the shared port all along.

Swap overhead = the swap's wall time minus the new engine's own load time (spawn to serving for
a cold start, the wake-up for a sleeping engine), both read from the simulated engine's event
log. Requests: ``failed`` reached an engine and got an error or no answer; ``fallback`` found no
model up (a router sends those down the fallback chain); ``hung`` took over 5 s. Prints a table and writes ``bench/results/swap.json``.

    .venv/bin/python bench/swap.py [--repeats 3] [--rate 50] [--load-seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import psutil

from _report import header, results_path, write_result  # noqa: E402
from gpumgr.sim.harness import FAST_HEALTH_YAML, DaemonHarness, free_port, wait_for  # noqa: E402

RESULTS = results_path("swap")
QWEN_7B = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
QWEN_14B = "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"
SERVED = "qwen-coder"
HUNG_S = 5.0
"""A request that takes longer than this counts as hung."""


def settings(load_s: float) -> str:
    return FAST_HEALTH_YAML.format(restart_after_s=60) + f"""
vllm:
  stop_timeout_s: 5
  start_timeout_s: 120
  drain_timeout_s: 10
simulate:
  load_seconds: {load_s:g}
"""


def provider(name: str, port: int, repo: str, status: str, sleep: bool, served: str) -> str:
    return f"""
  {name}:
    type: vllm
    base_url: http://127.0.0.1:{port}
    status: {status}
    max_model_len: 4096
    max_num_seqs: 4
    {"swap_mode: sleep" if sleep else ""}
    env:
      GPUMGR_SIM_TOKEN_DELAY_S: "0.02"
    models:
      - name: {served}
        hf_repo: {repo}
"""


class Load:
    """Client threads sending chat requests at ``rate`` per second to ``target()``: the (port,
    served model name) to use now, or None when nothing is up."""

    def __init__(self, rate: float, target: Callable[[], tuple[int, str] | None],
                 threads: int = 4) -> None:
        self.rate, self.target = rate, target
        self.results: list[tuple[float, float, str]] = []  # (sent at, took, ok|failed|fallback)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        period = len(self._threads) / self.rate
        with httpx2.Client(timeout=httpx2.Timeout(HUNG_S * 2)) as http:
            while not self._stop.is_set():
                t0 = time.monotonic()
                where = self.target()
                outcome = "fallback"  # nothing up: a router sends it down the fallback chain
                if where is not None:
                    port, model = where
                    try:
                        r = http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={
                            "model": model, "max_tokens": 4,
                            "messages": [{"role": "user", "content": "hi"}]})
                        outcome = "ok" if r.status_code == 200 else "failed"
                    except httpx2.HTTPError:
                        outcome = "failed"
                self.results.append((t0, time.monotonic() - t0, outcome))
                time.sleep(max(0.0, period - (time.monotonic() - t0)))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def during(self, t0: float, t1: float) -> dict[str, int]:
        window = [r for r in self.results if t0 <= r[0] <= t1]
        return {"requests": len(window), "failed": sum(1 for r in window if r[2] == "failed"),
                "fallback": sum(1 for r in window if r[2] == "fallback"),
                "hung": sum(1 for r in window if r[1] > HUNG_S)}


def engine_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def load_time_s(events: list[dict[str, Any]], after: float) -> float:
    """The new engine's own load time in a swap that began at ``after`` (wall clock): spawn
    (``init_start``) to ``serving``, or the wake-up the engine logged."""
    starts = [e for e in events if e["event"] == "init_start" and e["t"] >= after]
    if starts:
        pid = starts[0]["pid"]
        serving = next(e["t"] for e in events if e["pid"] == pid and e["event"] == "serving")
        return float(serving - starts[0]["t"])
    wakes = [e for e in events if e["event"] == "woken" and e["t"] >= after]
    return float(wakes[0]["took_s"]) if wakes else 0.0


def run_gpumgr(tmp: Path, mode: str, repeats: int, rate: float, load_s: float,
               routed: bool = True) -> list[dict[str, Any]]:
    """``routed``: the clients follow the status as the router's callback does; else they
    send straight to the shared port all along (what a client without the router sees)."""
    sleep = mode == "sleep"
    a = free_port()
    b = free_port() if sleep else a
    events = tmp / "events.jsonl"
    served = {"qwen-7b": SERVED + "-7b", "qwen-14b": SERVED + "-14b"} if sleep else {
        "qwen-7b": SERVED, "qwen-14b": SERVED}  # partners on one port share the served name
    daemon = DaemonHarness(
        tmp, "providers:" + provider("qwen-7b", a, QWEN_7B, "active", sleep, served["qwen-7b"])
        + provider("qwen-14b", b, QWEN_14B, "standby", sleep, served["qwen-14b"]),
        settings(load_s), env={"GPUMGR_SIM_EVENTS_FILE": str(events)},
    )
    ports = {"qwen-7b": a, "qwen-14b": b}
    current: dict[str, tuple[int, str] | None] = {"where": (a, served["qwen-7b"])}

    def follow_status() -> None:  # what a router consuming the status does: pick what is up
        while not stop.is_set():
            try:
                doc = daemon.status()
                up = [(ports[x["name"]], served[x["name"]]) for x in doc["backends"]
                      if x["name"] in ports and x["available"]]
                current["where"] = up[0] if up else None
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)

    stop = threading.Event()
    rows = []
    try:
        daemon.start()
        daemon.wait_up("qwen-7b", 120)
        if sleep:  # the first 14B start is a cold one: not what sleep mode is measured on
            cli(daemon, "swap", "qwen-7b", "qwen-14b")
            cli(daemon, "swap", "qwen-14b", "qwen-7b")
        watcher = threading.Thread(target=follow_status, daemon=True)
        watcher.start()
        with Load(rate, lambda: current["where"] if routed else (a, SERVED)) as load:
            time.sleep(1.0)
            pair = ["qwen-7b", "qwen-14b"]
            for i in range(repeats):
                old, new = pair[i % 2], pair[(i + 1) % 2]
                wall_t0, t0 = time.time(), time.monotonic()
                took = cli(daemon, "swap", old, new)
                daemon.wait_up(new, 60)
                time.sleep(1.0)
                load_s_new = load_time_s(engine_events(events), wall_t0)
                way = f"gpumgr {mode}" + ("" if routed else " (direct)")
                rows.append({"mode": way, "swap": f"{old} → {new}", "wall_s": took,
                             "load_s": load_s_new, "overhead_s": took - load_s_new,
                             **load.during(t0, time.monotonic())})
        stop.set()
        daemon.stop()
    finally:
        stop.set()
        daemon.cleanup(check_log=False)
    return rows


def cli(daemon: DaemonHarness, verb: str, old: str, new: str) -> float:
    """One swap through the control socket (what ``gpumgr swap`` sends), timed here from the
    request to its last line; raises on failure."""
    transport = httpx2.HTTPTransport(uds=str(daemon.runtime_dir / "gpumgr.sock"))
    t0 = time.monotonic()
    with httpx2.Client(transport=transport, base_url="http://localhost",
                       timeout=httpx2.Timeout(10.0, read=None)) as client:
        with client.stream("POST", f"/v1/control/{verb}", json={"old": old, "new": new}) as r:
            lines = [json.loads(x) for x in r.iter_lines() if x.strip()]
    if not lines or not lines[-1].get("ok"):
        raise SystemExit(f"gpumgr {verb} {old} {new} failed: {lines[-1] if lines else r.status_code}")
    return time.monotonic() - t0


def run_script(tmp: Path, repeats: int, rate: float, load_s: float, script_sleep_s: float,
               snapshots: dict[str, Path]) -> list[dict[str, Any]]:
    """The old way: pkill -f, a fixed sleep, a fixed 0.85 slice, /v1/models polled every 2 s."""
    from gpumgr.sim.gpu import STATE_ENV, SimGpuSpec, SimGpuState, sim_uuid

    port = free_port()
    state = tmp / "sim-gpu.json"
    SimGpuState(state).ensure([SimGpuSpec(index=0, uuid=sim_uuid(0), name="Quadro RTX 5000",
                                          memory_total_mib=16384, display_used_mib=300)])
    events = tmp / "events.jsonl"
    env = {**os.environ, STATE_ENV: str(state), "CUDA_VISIBLE_DEVICES": sim_uuid(0),
           "GPUMGR_SIM_LOAD_SECONDS": f"{load_s:g}", "GPUMGR_SIM_EVENTS_FILE": str(events),
           "GPUMGR_SIM_TOKEN_DELAY_S": "0.02"}
    procs: list[subprocess.Popen[bytes]] = []

    def launch(repo: str) -> None:
        argv = [sys.executable, "-m", "gpumgr.sim.vllm", "serve", str(snapshots[repo]),
                "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
                "--gpu-memory-utilization", "0.85", "--max-model-len", "4096",
                "--max-num-seqs", "4", "--dtype", "half", "--quantization", "awq_marlin"]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))

    def pkill() -> None:  # pkill -f "vllm serve"
        for p in psutil.process_iter(["cmdline"]):
            if "gpumgr.sim.vllm serve" in " ".join(p.info["cmdline"] or []) and str(port) in (p.info["cmdline"] or []):
                p.send_signal(signal.SIGTERM)

    def models_answer() -> bool:
        try:
            return httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    rows = []
    try:
        launch(QWEN_7B)
        wait_for(models_answer, 120, "the first engine")
        with Load(rate, lambda: (port, SERVED)) as load:
            time.sleep(1.0)
            repos = [QWEN_7B, QWEN_14B]
            for i in range(repeats):
                old, new = repos[i % 2], repos[(i + 1) % 2]
                wall_t0, t0 = time.time(), time.monotonic()
                pkill()
                time.sleep(script_sleep_s)
                launch(new)
                while not models_answer():
                    time.sleep(2.0)  # the script's poll
                took = time.monotonic() - t0
                time.sleep(1.0)
                load_s_new = load_time_s(engine_events(events), wall_t0)
                rows.append({"mode": "old script", "swap": f"{old.split('-')[2]} → "
                             f"{new.split('-')[2]}", "wall_s": took, "load_s": load_s_new,
                             "overhead_s": took - load_s_new, **load.during(t0, time.monotonic())})
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second in all")
    ap.add_argument("--load-seconds", type=float, default=2.0, help="simulated cold load time")
    ap.add_argument("--script-sleep", type=float, default=5.0, help="the old script's fixed sleep")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpumgr-bench-swap-") as tmp:
        root = Path(tmp)
        for mode, routed in (("restart", True), ("restart", False), ("sleep", True)):
            rows += run_gpumgr(root / f"{mode}-{routed}", mode, args.repeats, args.rate,
                               args.load_seconds, routed)
        cache = root / "restart-True" / "cache" / "simulated-hub"
        snapshots = {repo: next((cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
                     for repo in (QWEN_7B, QWEN_14B)}
        rows += run_script(root / "script", args.repeats, args.rate, args.load_seconds,
                           args.script_sleep, snapshots)
    print(f"{'way':<25} {'swap':<20} {'wall s':>7} {'load s':>7} {'overhead s':>10} "
          f"{'requests':>8} {'failed':>6} {'fallback':>8} {'hung':>5}")
    for r in rows:
        print(f"{r['mode']:<25} {r['swap']:<20} {r['wall_s']:7.2f} {r['load_s']:7.2f} "
              f"{r['overhead_s']:10.2f} {r['requests']:8d} {r['failed']:6d} {r['fallback']:8d} "
              f"{r['hung']:5d}")
    summary = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        summary[mode] = {
            "overhead_s_median": statistics.median(r["overhead_s"] for r in mine),
            "wall_s_median": statistics.median(r["wall_s"] for r in mine),
            "requests": sum(r["requests"] for r in mine),
            "failed": sum(r["failed"] for r in mine),
            "fallback": sum(r["fallback"] for r in mine),
            "hung": sum(r["hung"] for r in mine),
        }
        m = summary[mode]
        print(f"{mode:<25} median overhead {m['overhead_s_median']:.2f} s; of {m['requests']} "
              f"requests {m['failed']} failed, {m['fallback']} fell back, {m['hung']} hung")
    write_result({**header("swap"), "parameters": vars(args), "swaps": rows, "summary": summary},
                 RESULTS)


if __name__ == "__main__":
    main()
