"""Benchmark of the daemon's idle cost: CPU and RSS of ``gpumgr daemon --simulate`` doing nothing.

Not a test. Runs the daemon (``gpumgr.sim.harness``) on the example configuration of
``config/`` with its ports moved to free ones (so a running demo or test is not in the way): the
qwen-7b engine active on the simulated GPU, three vLLM providers on standby, a simulated Ollama
with the example's two models pulled and none loaded, Ollama Cloud pointed at a closed loopback
port with no key, the template disabled. ``gpumgr.yaml`` is the example's as it is, so the health
settings are the defaults (idle cost is mostly probing: the engine every 0.5 s, Ollama every 2 s).

Once the engine is up, it waits ``--settle-s`` and then samples, every ``--sample-s`` for
``--duration-s``, the CPU time and RSS (psutil) of the daemon process alone, of the simulated
engine (its whole process group, for context: a real vLLM costs far more), of the daemon's
other children (none once the weights are cached), and of the simulated Ollama. CPU is a percentage of one core
over each sample window. Prints a table and writes ``bench/results/idle.json``.

    .venv/bin/python bench/idle.py [--duration-s 30] [--sample-s 1] [--settle-s 5]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]

from _report import header, print_rows, results_path, write_result  # noqa: E402
from gpumgr.sim.harness import DaemonHarness, create_sim_gpu, free_port, sim_gpu_path  # noqa: E402

from gpumgr.sim.ollama_process import SimOllamaProcess, start_sim_ollama  # noqa: E402

RESULTS = results_path("idle")
EXAMPLE = REPO_ROOT / "config"
ENGINE = "qwen-7b"
OLLAMA_PULLED = ["qwen2.5-coder:7b", "llama3.1:latest"]


def example_providers(ollama_url: str) -> str:
    """The example registry with every loopback port replaced by a free one, Ollama pointed at
    the simulated one and the cloud at a closed loopback port."""
    text = (EXAMPLE / "providers.yaml").read_text()
    text = text.replace("http://127.0.0.1:11434", ollama_url)
    text = text.replace("https://ollama.com", f"http://127.0.0.1:{free_port()}")
    ports: dict[str, int] = {}

    def moved(m: re.Match[str]) -> str:
        return f"http://127.0.0.1:{ports.setdefault(m.group(1), free_port())}"

    return re.sub(r"http://127\.0\.0\.1:(8\d\d\d)", moved, text)


@dataclass
class Group:
    """CPU and RSS samples of a set of processes (summed)."""

    name: str
    cpu_percent: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    last_cpu_s: float | None = None

    def sample(self, procs: list[psutil.Process], window_s: float) -> None:
        cpu_s = rss = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                cpu_s += t.user + t.system
                rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        if self.last_cpu_s is not None:
            self.cpu_percent.append(max(0.0, cpu_s - self.last_cpu_s) / window_s * 100)
            self.rss_mib.append(rss / 2**20)
        self.last_cpu_s = cpu_s

    def summary(self) -> dict[str, Any]:
        def stats(xs: list[float]) -> dict[str, float]:
            return {"median": round(statistics.median(xs), 2), "min": round(min(xs), 2),
                    "max": round(max(xs), 2), "mean": round(statistics.fmean(xs), 2)}

        return {"n": len(self.cpu_percent), "cpu_percent_of_one_core": stats(self.cpu_percent),
                "rss_mib": stats(self.rss_mib)}


def process_groups(h: DaemonHarness, ollama: SimOllamaProcess) -> dict[str, list[psutil.Process]]:
    """The daemon, its engine's process tree, its other children, the simulated Ollama."""
    assert h.proc is not None
    daemon = psutil.Process(h.proc.pid)
    engine_pid = int(h.backend(ENGINE)["pid"])
    engine = psutil.Process(engine_pid)
    engine_tree = [engine, *engine.children(recursive=True)]
    engine_pids = {p.pid for p in engine_tree}
    others = [p for p in daemon.children(recursive=True) if p.pid not in engine_pids]
    return {"daemon": [daemon], "engine (simulated vLLM)": engine_tree,
            "daemon's other children": others,
            "simulated Ollama": [psutil.Process(ollama.pid)]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gpumgr-bench-idle-") as tmp_name:
        tmp = Path(tmp_name)
        ollama: SimOllamaProcess | None = None
        h: DaemonHarness | None = None
        try:
            gpu_uuid = create_sim_gpu(tmp)
            ollama = start_sim_ollama(OLLAMA_PULLED, env={
                "GPUMGR_SIM_GPU_STATE": str(sim_gpu_path(tmp)), "CUDA_VISIBLE_DEVICES": gpu_uuid})
            h = DaemonHarness(tmp, example_providers(ollama.base_url),
                              (EXAMPLE / "gpumgr.yaml").read_text(),
                              env={"OLLAMA_CLOUD_API_KEY": ""})
            (h.config_dir / "model-mappings.yaml").write_text(
                (EXAMPLE / "model-mappings.yaml").read_text())
            started = time.monotonic()
            h.start()
            h.wait_up(ENGINE, timeout_s=180)
            up_after_s = time.monotonic() - started
            time.sleep(args.settle_s)
            groups_procs = process_groups(h, ollama)
            groups = {name: Group(name) for name in groups_procs}
            states = {b["name"]: b["state"] for b in h.status()["backends"]}
            deadline = time.monotonic() + args.duration_s + args.sample_s
            last = time.monotonic()
            for name, group in groups.items():
                group.sample(groups_procs[name], 1.0)
            while time.monotonic() < deadline:
                time.sleep(args.sample_s)
                now = time.monotonic()
                for name, group in groups.items():
                    group.sample(groups_procs[name], now - last)
                last = now
            rc = h.stop()
            if rc != 0:
                raise RuntimeError(f"daemon exited {rc}")
        finally:
            if h is not None:
                h.cleanup(check_log=False)
            if ollama is not None:
                ollama.stop()
    return {
        **header("idle"),
        "config": "config/ (the example), ports moved, simulated Ollama, cloud unreachable",
        "health_settings": "defaults (example gpumgr.yaml)",
        "backend_states": states,
        "engine_up_after_s": round(up_after_s, 2),
        "settle_s": args.settle_s,
        "duration_s": args.duration_s,
        "sample_s": args.sample_s,
        "groups": {name: g.summary() for name, g in groups.items()},
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"idle cost over {result['duration_s']:g} s, {result['sample_s']:g} s samples "
          f"({result['machine']['cpus']} CPUs)")
    rows: list[tuple[str, object]] = []
    for name, g in result["groups"].items():
        cpu, rss = g["cpu_percent_of_one_core"], g["rss_mib"]
        rows.append((name, f"CPU {cpu['median']:.2f} % median, {cpu['max']:.2f} % max; "
                           f"RSS {rss['median']:.1f} MiB median, {rss['max']:.1f} MiB max"))
    print_rows(rows, indent="  ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args)
    print_table(result)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
