"""Benchmark of ``GET /metrics`` with 8 backends: the server CPU one scrape costs, and what the
lifecycle metrics of issue 20 (docs/monitoring.md) add to it.

Not a test. Two servers, alternating for ``--rounds`` rounds, each a subprocess running the
status publisher and app with the 8 synthetic backends of ``bench/status_api.py`` (probe timings
refreshed every 2 s): ``before``, the document's metrics only (what ``/metrics`` served before),
and ``after``, plus the lifecycle metrics with every series a busy day gives them (8 backends'
time in 5 states, desired-vs-up, VRAM planned/used, restarts by 4 reasons, cold start, drain,
detection and estimate histograms, swaps in 3 modes and 3 outcomes, 3 Ollama models). The client
(this process) scrapes ``/metrics`` from ``--concurrency`` connections for ``--duration-s``; the
server CPU per scrape is the server process's CPU time (psutil) over the scrapes it answered.
It also times ``render()`` alone in-process (no HTTP), and reports both processes' idle RSS.
Prints a table and writes ``bench/results/metrics.json``.

    .venv/bin/python bench/metrics.py [--duration-s 5] [--concurrency 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import psutil
import structlog
from _report import header, print_rows, results_path, write_result
from status_api import PROBE_INTERVAL_S, synthetic_backends

from gpumgr.api.server import ApiServer
from gpumgr.api.status_app import create_status_app
from gpumgr.status.document import DaemonInfo, GpuProcess, GpuStatus
from gpumgr.status.metrics import (
    LifecycleMetrics,
    LifecycleView,
    LoadedModelView,
    OperationRecord,
)
from gpumgr.status.publisher import StatusPublisher

RESULTS = results_path("metrics")
STATES = ("stopped", "downloading", "starting", "up", "draining")


def publisher(lifecycle: bool) -> StatusPublisher:
    pub = StatusPublisher(daemon=DaemonInfo(pid=os.getpid(), started_at=datetime.now(UTC)))
    backends = synthetic_backends()
    pub.set_backends(backends)
    pub.set_gpus([GpuStatus(
        index=0, uuid="GPU-sim-0", name="Quadro RTX 5000", memory_total_mib=16384,
        memory_used_mib=12000, memory_free_mib=4384,
        processes=[GpuProcess(pid=10000 + i, used_mib=2800, owner=f"backend-{i}") for i in range(4)],
    )])
    if not lifecycle:
        return pub
    names = [b.name for b in backends]
    view = LifecycleView(
        desired_up={n: True for n in names},
        gpu_of={n: 0 for n in names[:5]},
        state_seconds={(n, s): 100.0 + i for i, n in enumerate(names) for s in STATES},
        ollama_loaded={"backend-4": tuple(LoadedModelView(f"model-{k}:latest", 5 * 2**30, 4 * 2**30)
                                          for k in range(3))},
    )
    m = LifecycleMetrics(pub.metrics, lambda: pub.document, lambda: view)
    for n in names:
        m.know_backend(n)
        for s in (30.0, 45.0, 60.0):
            m.observe_cold_start(n, s)
        m.observe_drain(n, 1.5)
        m.observe_detection(n, "death", 0.3)
        m.observe_detection(n, "hang", 6.0)
        m.count_restart(n, "crash")
        m.observe_start_estimate(n, 40.0, 44.0)
        m.observe_operation(OperationRecord("wake", "-", "ok", 2.0, (n,), {"wake": 2.0}))
    for mode in ("break_before_make", "make_before_break", "sleep"):
        for outcome in ("ok", "failed", "rolled_back"):
            m.observe_operation(OperationRecord("swap", mode, outcome, 42.0, ("a", "b"), {}))
    return pub


async def serve(lifecycle: bool) -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    pub = publisher(lifecycle)
    server = ApiServer.tcp(create_status_app(pub), "127.0.0.1", 0)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(server.port, flush=True)

    async def prober(name: str, offset_s: float) -> None:
        await asyncio.sleep(offset_s)
        while True:
            pub.update_backend(name, last_check=datetime.now(UTC), latency_ms=1.5)
            await asyncio.sleep(PROBE_INTERVAL_S)

    tasks = [asyncio.create_task(prober(b.name, i * PROBE_INTERVAL_S / 8))
             for i, b in enumerate(synthetic_backends())]
    await stop.wait()
    for t in tasks:
        t.cancel()
    pub.close()
    await server.stop()


async def scrape(base: str, duration_s: float, concurrency: int) -> tuple[int, int, int]:
    """(scrapes, errors, bytes of one answer)."""
    done = errors = size = 0
    end = time.perf_counter() + duration_s
    async with httpx2.AsyncClient(base_url=base, timeout=10) as client:
        async def worker() -> None:
            nonlocal done, errors, size
            while time.perf_counter() < end:
                r = await client.get("/metrics")
                if r.status_code == 200:
                    done += 1
                    size = len(r.content)
                else:
                    errors += 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors, size


def measure(lifecycle: bool, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--serve"] + (["--lifecycle"] if lifecycle else [])
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        proc = psutil.Process(server.pid)
        time.sleep(0.5)
        idle_rss = proc.memory_info().rss / 2**20
        c0 = sum(proc.cpu_times()[:2])
        n, errors, size = asyncio.run(scrape(base, args.duration_s, args.concurrency))
        cpu_s = sum(proc.cpu_times()[:2]) - c0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    return {"scrapes": n, "errors": errors, "scrapes_per_s": round(n / args.duration_s, 1),
            "body_bytes": size, "server_cpu_ms_per_scrape": round(cpu_s / n * 1000, 3) if n else None,
            "idle_rss_mib": round(idle_rss, 1)}


def render_cost_ms(lifecycle: bool, n: int) -> float:
    pub = publisher(lifecycle)
    pub.metrics.render()
    t0 = time.process_time()
    for _ in range(n):
        pub.metrics.render()
    return (time.process_time() - t0) / n * 1000


def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        rounds.append({"before": measure(False, args), "after": measure(True, args)})
    med = {side: {k: round(statistics.median(r[side][k] for r in rounds), 3)
                  for k in rounds[0][side] if isinstance(rounds[0][side][k], (int, float))}
           for side in ("before", "after")}
    render = {side: round(statistics.median(render_cost_ms(side == "after", args.renders)
                                            for _ in range(3)), 3) for side in ("before", "after")}
    return {
        **header("metrics"),
        "backends": 8, "rounds": args.rounds, "duration_s": args.duration_s,
        "concurrency": args.concurrency,
        "median": med,
        "render_cpu_ms": render,
        "added_server_cpu_ms_per_scrape": round(
            med["after"]["server_cpu_ms_per_scrape"] - med["before"]["server_cpu_ms_per_scrape"], 3),
        "added_render_cpu_ms": round(render["after"] - render["before"], 3),
        "each_round": rounds,
    }


def print_table(result: dict[str, Any]) -> None:
    b, a = result["median"]["before"], result["median"]["after"]
    rows = [
        ("/metrics body (bytes)", f"{b['body_bytes']:.0f} → {a['body_bytes']:.0f}"),
        ("scrapes/s", f"{b['scrapes_per_s']} → {a['scrapes_per_s']}"),
        ("server CPU per scrape (ms)", f"{b['server_cpu_ms_per_scrape']} → {a['server_cpu_ms_per_scrape']}"),
        ("added server CPU per scrape (ms)", result["added_server_cpu_ms_per_scrape"]),
        ("render() CPU (ms)", f"{result['render_cpu_ms']['before']} → {result['render_cpu_ms']['after']}"),
        ("added render() CPU (ms)", result["added_render_cpu_ms"]),
        ("server idle RSS (MiB)", f"{b['idle_rss_mib']} → {a['idle_rss_mib']}"),
    ]
    print(f"/metrics benchmark, 8 backends ({result['machine']['cpus']} CPUs), median of "
          f"{result['rounds']} rounds; before → after the lifecycle metrics")
    print_rows(rows, indent="  ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--renders", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lifecycle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.lifecycle))
        return
    result = run(args)
    print_table(result)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
