"""Benchmark of the status API: /v1/status throughput and latency against a bare uvicorn app
serving the same bytes, idle CPU and RSS.

Not a test. Starts the status publisher and its uvicorn server, with 8 synthetic backends whose
probe timings refresh every 2 s (what a daemon does when nothing happens), in a subprocess;
loads ``GET /v1/status`` from this (separate) process with httpx2 at a fixed concurrency;
then measures the server's idle CPU and RSS with psutil. Then the baseline: a bare ASGI app (no
FastAPI, no middleware, no publisher) on plain ``uvicorn.Server`` in the same kind of
subprocess, same event loop (asyncio's default, as the daemon's) and HTTP implementation,
returning the bytes gpumgr's ``/v1/status`` answered, under the same load. The two alternate for
``--rounds`` rounds (the numbers are the medians over the rounds, each round in the JSON). The
ratio says what gpumgr's app costs over the cheapest server of the same document. Prints a table and writes
``bench/results/status_api.json``.

    .venv/bin/python bench/status_api.py [--duration-s 5] [--concurrency 16] [--idle-s 5] [--rounds 3]

The load generator is Python too, so on a small machine the client may saturate before the
server (then both servers show about the same req/s): the JSON records both processes' CPU time
during the load, and the server CPU per request is the comparison that survives that.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import psutil
import structlog
import uvicorn
from _report import header, print_rows, results_path, write_result

from gpumgr.api.server import ApiServer
from gpumgr.api.status_app import create_status_app
from gpumgr.backend_state import BackendState
from gpumgr.status.document import BackendStatus, DaemonInfo, GpuProcess, GpuStatus
from gpumgr.status.publisher import StatusPublisher

RESULTS = results_path("status_api")
BACKENDS = 8
PROBE_INTERVAL_S = 2.0


def synthetic_backends() -> list[BackendStatus]:
    kinds = ["vllm", "vllm", "vllm", "vllm", "ollama", "ollama_cloud", "llama_cpp", "openai_compatible"]
    return [
        BackendStatus(
            name=f"backend-{i}",
            type=kind,
            base_url=f"http://127.0.0.1:{8001 + i}",
            state=BackendState.UP if i % 3 else BackendState.STOPPED,
            managed=kind == "vllm",
            models=[f"model-{i}", f"model-{i}-alias"],
            pid=10000 + i if kind == "vllm" else None,
            port=8001 + i,
            gpu_memory_utilization=0.3 if kind == "vllm" else None,
            detail="health 200",
        )
        for i, kind in enumerate(kinds[:BACKENDS])
    ]


async def serve(runtime_dir: Path) -> None:
    """Server side: publisher + API + a synthetic prober; prints the port, runs until SIGTERM."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: port
    pub = StatusPublisher(
        daemon=DaemonInfo(pid=os.getpid(), started_at=datetime.now(UTC), simulated=True),
        status_path=runtime_dir / "status.json",
    )
    pub.set_backends(synthetic_backends())
    pub.set_gpus(
        [
            GpuStatus(
                index=0, uuid="GPU-sim-0", name="Quadro RTX 5000", memory_total_mib=16384,
                memory_used_mib=12000, memory_free_mib=4384,
                processes=[GpuProcess(pid=10000 + i, used_mib=2800, owner=f"backend-{i}")
                           for i in range(4)],
            )
        ]
    )
    server = ApiServer.tcp(create_status_app(pub), "127.0.0.1", 0)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(server.port, flush=True)

    async def prober(name: str, offset_s: float) -> None:
        await asyncio.sleep(offset_s)
        while True:
            pub.update_backend(name, last_check=datetime.now(UTC), latency_ms=1.5)
            await asyncio.sleep(PROBE_INTERVAL_S)

    probers = [
        asyncio.create_task(prober(b.name, i * PROBE_INTERVAL_S / BACKENDS))
        for i, b in enumerate(synthetic_backends())
    ]
    await stop.wait()
    for task in probers:
        task.cancel()
    pub.close()
    await server.stop()


async def serve_bare(body_path: Path) -> None:
    """Baseline server: a bare ASGI app answering every request with the bytes in ``body_path``
    (what gpumgr's ``/v1/status`` returned) on plain uvicorn; prints the port, runs until
    SIGTERM."""
    body = body_path.read_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # proto=IPPROTO_TCP as gpumgr's ApiServer binds: asyncio sets TCP_NODELAY only then.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none")
    server = uvicorn.Server(config)
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGTERM, lambda: setattr(server, "should_exit", True))
    print(sock.getsockname()[1], flush=True)
    await server.serve(sockets=[sock])


async def load(base: str, duration_s: float, concurrency: int) -> tuple[list[float], int]:
    """Closed-loop load: ``concurrency`` workers, each issuing the next request on an answer."""
    latencies_s: list[float] = []
    errors = 0
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=base, limits=limits, timeout=10) as client:
        warm_until = time.perf_counter() + 0.5
        while time.perf_counter() < warm_until:
            await client.get("/v1/status")
        deadline = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                response = await client.get("/v1/status")
                if response.status_code == 200 and response.content.startswith(b'{"version":1'):
                    latencies_s.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies_s, errors


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def cpu_s(times: Any) -> float:
    return float(times.user + times.system)


def measure_server(argv: list[str], args: argparse.Namespace, *, idle: bool,
                   body_out: Path | None = None) -> dict[str, Any]:
    """Start the server ``argv`` (it prints its port), load it, optionally measure it idle;
    ``body_out``: save one ``/v1/status`` answer there first."""
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        if body_out is not None:
            body_out.write_bytes(httpx2.get(base + "/v1/status", timeout=10).content)
        proc, me = psutil.Process(server.pid), psutil.Process()
        server_cpu0, my_cpu0 = cpu_s(proc.cpu_times()), cpu_s(me.cpu_times())
        t0 = time.perf_counter()
        latencies_s, errors = asyncio.run(load(base, args.duration_s, args.concurrency))
        wall_s = time.perf_counter() - t0
        server_cpu1, my_cpu1 = cpu_s(proc.cpu_times()), cpu_s(me.cpu_times())
        measured: dict[str, Any] = {"rss_after_load_mib": round(proc.memory_info().rss / 2**20, 1)}
        if idle:
            time.sleep(1.0)  # let the load's connections close before measuring idle
            proc.cpu_percent(None)
            time.sleep(args.idle_s)
            measured["idle_cpu_percent"] = round(proc.cpu_percent(None), 2)
            measured["idle_rss_mib"] = round(proc.memory_info().rss / 2**20, 1)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    latencies_s.sort()
    n = len(latencies_s)
    return {
        "requests": n,
        "errors": errors,
        "requests_per_s": round(n / args.duration_s, 1),
        "latency_p50_ms": round(percentile(latencies_s, 0.50) * 1000, 2) if n else None,
        "latency_p99_ms": round(percentile(latencies_s, 0.99) * 1000, 2) if n else None,
        "latency_max_ms": round(latencies_s[-1] * 1000, 2) if n else None,
        "latency_min_ms": round(latencies_s[0] * 1000, 2) if n else None,
        "server_cpu_s_during_load": round(server_cpu1 - server_cpu0, 2),
        "server_cpu_ms_per_request": round((server_cpu1 - server_cpu0) / n * 1000, 3) if n else None,
        "client_cpu_s_during_load": round(my_cpu1 - my_cpu0, 2),
        "load_wall_s": round(wall_s, 2),
        **measured,
    }


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the median over the rounds (keys every round has a number for)."""
    keys = [k for k in rounds[0] if all(isinstance(r.get(k), (int, float)) for r in rounds)]
    return {k: round(statistics.median(r[k] for r in rounds), 3) for k in keys}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``--rounds`` rounds, each gpumgr then the bare app (alternating, so that a change in the
    shared machine's load hits both); idle is measured after gpumgr's first round."""
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpumgr-bench-") as runtime_dir:
        body = Path(runtime_dir) / "status-body.json"
        for i in range(args.rounds):
            gpumgr = measure_server(
                [sys.executable, __file__, "--serve", "--runtime-dir", runtime_dir], args,
                idle=i == 0, body_out=body,
            )
            bare = measure_server(
                [sys.executable, __file__, "--serve-bare", "--body", str(body)], args, idle=False
            )
            ratio = gpumgr["requests_per_s"] / bare["requests_per_s"] if bare["requests_per_s"] else 0
            rounds.append({"gpumgr": gpumgr, "bare_uvicorn": bare,
                           "gpumgr_to_bare_throughput": round(ratio, 3)})
        body_bytes = body.stat().st_size
    gpumgr = median_of([r["gpumgr"] for r in rounds])
    first = rounds[0]["gpumgr"]
    return {
        **header("status_api"),
        "backends": BACKENDS,
        "body_bytes": body_bytes,
        "concurrency": args.concurrency,
        "duration_s": args.duration_s,
        "rounds": args.rounds,
        "aggregate": "median over the rounds (idle: after the first round)",
        "requests": gpumgr["requests"],
        "errors": sum(r["gpumgr"]["errors"] for r in rounds),
        "requests_per_s": gpumgr["requests_per_s"],
        "latency_p50_ms": gpumgr["latency_p50_ms"],
        "latency_p99_ms": gpumgr["latency_p99_ms"],
        "latency_max_ms": max(r["gpumgr"]["latency_max_ms"] for r in rounds),
        "latency_min_ms": min(r["gpumgr"]["latency_min_ms"] for r in rounds),
        "server_cpu_s_during_load": gpumgr["server_cpu_s_during_load"],
        "server_cpu_ms_per_request": gpumgr["server_cpu_ms_per_request"],
        "client_cpu_s_during_load": gpumgr["client_cpu_s_during_load"],
        "load_wall_s": gpumgr["load_wall_s"],
        "server_rss_after_load_mib": gpumgr["rss_after_load_mib"],
        "idle_s": args.idle_s,
        "server_idle_cpu_percent": first["idle_cpu_percent"],
        "server_idle_rss_mib": first["idle_rss_mib"],
        "bare_uvicorn": {**median_of([r["bare_uvicorn"] for r in rounds]),
                         "errors": sum(r["bare_uvicorn"]["errors"] for r in rounds)},
        "gpumgr_to_bare_throughput": median_of(rounds)["gpumgr_to_bare_throughput"],
        "per_round": rounds,
    }


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("backends", result["backends"]),
        ("concurrency", result["concurrency"]),
        ("requests / errors", f'{result["requests"]} / {result["errors"]}'),
        ("/v1/status req/s", result["requests_per_s"]),
        ("latency p50 (ms)", result["latency_p50_ms"]),
        ("latency p99 (ms)", result["latency_p99_ms"]),
        ("server CPU s under load", result["server_cpu_s_during_load"]),
        ("client CPU s under load", result["client_cpu_s_during_load"]),
        ("server idle CPU (%)", result["server_idle_cpu_percent"]),
        ("server idle RSS (MiB)", result["server_idle_rss_mib"]),
        ("bare uvicorn req/s (same bytes)", result["bare_uvicorn"]["requests_per_s"]),
        ("bare uvicorn p50 / p99 (ms)",
         f'{result["bare_uvicorn"]["latency_p50_ms"]} / {result["bare_uvicorn"]["latency_p99_ms"]}'),
        ("server CPU ms / request", result["server_cpu_ms_per_request"]),
        ("bare uvicorn CPU ms / request", result["bare_uvicorn"]["server_cpu_ms_per_request"]),
        ("gpumgr / bare throughput", result["gpumgr_to_bare_throughput"]),
    ]
    print(f"status API benchmark ({result['machine']['cpus']} CPUs), median of "
          f"{result['rounds']} rounds")
    print_rows(rows, indent="  ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="gpumgr/bare pairs, alternating")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runtime-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--body", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.runtime_dir))
        return
    if args.serve_bare:
        asyncio.run(serve_bare(args.body))
        return
    result = run(args)
    print_table(result)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
