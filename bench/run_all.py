"""Run every benchmark and write the report: ``docs/benchmarks.md`` plus its raw JSON.

Each benchmark in ``bench/`` runs as a subprocess with modest parameters (the whole set takes
about 5 minutes on a 2-core machine), then the test suite once (``bash scripts/test.sh``, which
runs ``pytest -q``; a second ``-q`` would drop pytest's summary line) for its own duration,
unless ``--suite-duration`` passes in a value measured elsewhere. The results each benchmark wrote to ``bench/results/<name>.json`` during this run are copied to
``docs/benchmarks/<name>.json`` (committed, so the report can be checked and regenerated from
them) together with ``docs/benchmarks/run.json`` (the machine, the load average before and after
each step, every command and its exit status); ``docs/benchmarks.md`` is rendered from those
files by ``bench/_benchmarks_md.py``.

    .venv/bin/python bench/run_all.py [--suite-duration SECONDS] [--reuse NAME,...] [--render-only]

``--reuse`` takes the named benchmarks (or ``suite``) from the previous run's ``docs/benchmarks/``
instead of running them (the report says when each was measured); ``--render-only`` re-renders the report
from ``docs/benchmarks/`` without running anything. A benchmark that fails or is absent (the
router benchmark is optional) is listed as such in the report; nothing else stops the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _benchmarks_md import render
from _report import RESULTS_DIR, header, results_path, write_result

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DOCS_JSON_DIR = REPO_ROOT / "docs" / "benchmarks"
REPORT = REPO_ROOT / "docs" / "benchmarks.md"
SUITE_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Benchmark:
    name: str
    """Its result is ``bench/results/<name>.json``."""
    args: tuple[str, ...]
    timeout_s: float
    optional: bool = False
    """Absent is not a failure (a benchmark still being written)."""

    @property
    def script(self) -> Path:
        return BENCH_DIR / f"{self.name}.py"


BENCHMARKS = (
    Benchmark("plan_efficiency", ("--scenarios", "2000"), 120),
    Benchmark("litellm_filter", ("--picks", "20000"), 180),
    Benchmark("status_api", ("--duration-s", "5", "--concurrency", "16", "--idle-s", "5",
                                 "--rounds", "3"), 240),
    Benchmark("idle", ("--duration-s", "30", "--sample-s", "1", "--settle-s", "5"), 300),
    Benchmark("detection", ("--repeats", "10"), 420),
    Benchmark("swap", ("--repeats", "4", "--rate", "50", "--load-seconds", "2"), 480),
    Benchmark("router", (), 420, optional=True),
    Benchmark("soak", ("--steps", "200", "--seeds", "1,2,3,4,5"), 600),
    Benchmark("metrics", ("--duration-s", "5", "--concurrency", "4", "--rounds", "3"), 180,
              optional=True),
    Benchmark("policy", (), 2700, optional=True),  # 10 rows of a 2-min trace, each on a fresh stack
    Benchmark("owner_failover", ("--requests", "15", "--as-is", "3"), 600, optional=True),
)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """What the numbers were measured on, beyond ``_report.header``'s cpus/python/platform."""
    info: dict[str, Any] = dict(header("run")["machine"])
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu_model"] = model.group(1).strip() if model else None
        mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        info["memory_gib"] = round(int(mem.group(1)) / 2**20, 1) if mem else None
    except OSError:
        pass
    return info


def tail(text: str, chars: int = 1500) -> str:
    return text[-chars:]


def run_benchmark(b: Benchmark) -> dict[str, Any]:
    """Run one benchmark; its step record, with ``result`` when it wrote one during this run."""
    step: dict[str, Any] = {"name": b.name, "kind": "benchmark"}
    if not b.script.exists():
        step["status"] = "missing"
        print(f"== {b.name}: {b.script.name} does not exist, skipped", flush=True)
        return step
    argv = [sys.executable, str(b.script), *b.args]
    step["command"] = " ".join(["python", f"bench/{b.script.name}", *b.args])
    step["loadavg_before"] = loadavg()
    print(f"== {b.name}: {step['command']}", flush=True)
    started_wall = time.time()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=b.timeout_s)
        step["rc"], output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        step["rc"] = "timeout"
        output = _text(exc.stdout) + _text(exc.stderr)
    step["wall_s"] = round(time.monotonic() - t0, 1)
    step["loadavg_after"] = loadavg()
    out = results_path(b.name)
    fresh = out.exists() and out.stat().st_mtime >= started_wall - 1
    if step["rc"] == 0 and fresh:
        step["status"] = "ok"
        step["result"] = json.loads(out.read_text())
    else:
        step["status"] = "failed"
        step["output_tail"] = tail(output)
    print(f"   {step['status']} in {step['wall_s']} s (rc {step['rc']})", flush=True)
    return step


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def run_suite(given_s: float | None) -> dict[str, Any]:
    """The test suite's duration: measured here (``bash scripts/test.sh``) or given."""
    step: dict[str, Any] = {"name": "suite", "kind": "suite"}
    if given_s is not None:
        step |= {"status": "ok", "command": "(--suite-duration: measured elsewhere)",
                 "result": {**header("suite"), "duration_s": given_s, "source": "given",
                            "summary": None}}
        return step
    step["command"] = "bash scripts/test.sh"
    step["loadavg_before"] = loadavg()
    print(f"== suite: {step['command']}", flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(["bash", "scripts/test.sh"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
        step["rc"], output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        step["rc"], output = "timeout", _text(exc.stdout) + _text(exc.stderr)
    duration_s = round(time.monotonic() - t0, 1)
    step["wall_s"] = duration_s
    step["loadavg_after"] = loadavg()
    summaries = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", output, re.M)
    result = {**header("suite"), "duration_s": duration_s, "source": "measured",
              "command": step["command"], "rc": step["rc"],
              "summary": summaries[-1] if summaries else None,
              "failed_tests": re.findall(r"^FAILED (\S+)", output, re.M)}
    write_result(result, results_path("suite"))
    step["status"] = "ok" if step["rc"] == 0 else "failed"
    step["result"] = result
    if step["rc"] != 0:
        step["output_tail"] = tail(output)
    print(f"   suite {step['status']} in {duration_s} s: {result['summary']}", flush=True)
    return step


def reused(name: str) -> dict[str, Any]:
    path = DOCS_JSON_DIR / f"{name}.json"
    if not path.exists():
        return {"name": name, "kind": "benchmark", "status": "missing",
                "note": f"--reuse, but {path.relative_to(REPO_ROOT)} does not exist"}
    previous = json.loads((DOCS_JSON_DIR / "run.json").read_text()) if (
        DOCS_JSON_DIR / "run.json").exists() else {"steps": []}
    step = next((s for s in previous["steps"] if s["name"] == name),
                {"name": name, "kind": "suite" if name == "suite" else "benchmark"})
    return {**step, "status": "ok", "reused": True, "result": json.loads(path.read_text())}


def save(run: dict[str, Any]) -> None:
    """Every step's result to ``docs/benchmarks/<name>.json``, the run to ``run.json``, and
    the report; results no longer produced are removed so the folder matches the report."""
    DOCS_JSON_DIR.mkdir(parents=True, exist_ok=True)
    keep = {"run.json"}
    for step in run["steps"]:
        if "result" in step:
            (DOCS_JSON_DIR / f"{step['name']}.json").write_text(
                json.dumps(step["result"], indent=2) + "\n")
            keep.add(f"{step['name']}.json")
    for stale in DOCS_JSON_DIR.glob("*.json"):
        if stale.name not in keep:
            stale.unlink()
    slim = {**run, "steps": [{k: v for k, v in s.items() if k != "result"} for s in run["steps"]]}
    (DOCS_JSON_DIR / "run.json").write_text(json.dumps(slim, indent=2) + "\n")
    REPORT.write_text(render(run))
    print(f"wrote {REPORT.relative_to(REPO_ROOT)} and {DOCS_JSON_DIR.relative_to(REPO_ROOT)}/")


def load_saved() -> dict[str, Any]:
    """The last run as saved in ``docs/benchmarks/`` (for ``--render-only``)."""
    run: dict[str, Any] = json.loads((DOCS_JSON_DIR / "run.json").read_text())
    for step in run["steps"]:
        path = DOCS_JSON_DIR / f"{step['name']}.json"
        if path.exists():
            step["result"] = json.loads(path.read_text())
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--suite-duration", type=float, metavar="SECONDS",
                    help="the suite's duration measured elsewhere (default: run the suite)")
    ap.add_argument("--reuse", default="", metavar="NAME,...",
                    help="take these benchmarks' results from docs/benchmarks/ instead of running")
    ap.add_argument("--render-only", action="store_true",
                    help="re-render docs/benchmarks.md from docs/benchmarks/ and exit")
    args = ap.parse_args()
    if args.render_only:
        REPORT.write_text(render(load_saved()))
        print(f"wrote {REPORT.relative_to(REPO_ROOT)}")
        return
    reuse = {n.strip() for n in args.reuse.split(",") if n.strip()}
    unknown = reuse - {b.name for b in BENCHMARKS} - {"suite"}
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    run: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "loadavg_start": loadavg(),
        "steps": [],
    }
    t0 = time.monotonic()
    for b in BENCHMARKS:
        run["steps"].append(reused(b.name) if b.name in reuse else run_benchmark(b))
        run["steps"][-1]["optional"] = b.optional
    run["benchmarks_wall_s"] = round(time.monotonic() - t0, 1)
    run["steps"].append(reused("suite") if "suite" in reuse else run_suite(args.suite_duration))
    run["loadavg_end"] = loadavg()
    run["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    save(run)
    failed = [s["name"] for s in run["steps"]
              if s["status"] == "failed" or (s["status"] == "missing" and not s.get("optional"))]
    if failed:
        print(f"failed or missing: {', '.join(failed)}", file=sys.stderr)


if __name__ == "__main__":
    main()
