"""Render ``docs/benchmarks.md`` from one run of ``bench/run_all.py`` (its steps and results).

Every benchmark gets what it measures and how (its script's own docstring, so the report cannot
drift from the code), the command that produced the numbers, and one table:
measure | median | p99 (the max where n < 100) | spread (min–max) | n. A benchmark whose JSON
this module has no table for (a new one) is shown as its numeric fields.
"""

from __future__ import annotations

import ast
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
P99_MIN_N = 100
"""Below this many samples the p99 column shows the max (a p99 of 10 samples is the max anyway)."""

Row = tuple[str, str, str, str, str]
"""measure, median, p99 or max, spread, n (all formatted)."""

DASH = "–"


def num(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, no exponent for ordinary magnitudes."""
    if x is None:
        return DASH
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def stats_row(measure: str, values: Sequence[float], scale: float = 1.0) -> Row:
    """median | p99 (max when n is small) | min–max | n of ``values`` times ``scale``."""
    xs = sorted(v * scale for v in values)
    if not xs:
        return (measure, DASH, DASH, DASH, "0")
    n = len(xs)
    if n >= P99_MIN_N:
        tail = f"{num(xs[min(n - 1, round(0.99 * (n - 1)))])}"
    else:
        tail = f"{num(xs[-1])} (max)"
    return (measure, num(statistics.median(xs)), tail, f"{num(xs[0])}–{num(xs[-1])}", str(n))


def single_row(measure: str, value: float | str | None, n: str = "1 run") -> Row:
    shown = value if isinstance(value, str) else num(value)
    return (measure, shown, DASH, DASH, n)


def table(rows: Iterable[Row]) -> str:
    head = "| measure | median | p99 (max where n < 100) | spread (min–max) | n |\n|---|---:|---:|---:|---:|"
    return head + "\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows)


def docstring(name: str) -> str:
    """The benchmark script's docstring without its usage lines (indented command lines)."""
    path = BENCH_DIR / f"{name}.py"
    if not path.exists():
        return ""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    lines = [ln for ln in doc.splitlines() if not ln.startswith("    ") and
             not ln.lower().startswith("usage:")]
    return "\n".join(lines).strip()


# -- one table per benchmark ---------------------------------------------------------------------


def plan_efficiency_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for key, label in (("share_of_usable_memory_handed_out", "share of usable memory handed out"),
                       ("share_where_none_capped_or_pinned",
                        "… where no instance is pinned or KV-capped")):
        s = r[key]
        rows.append((f"{label} (p5 {num(s['p5'])})", num(s["median"]), f"{num(s['max'])} (max)",
                     f"{num(s['min'])}–{num(s['max'])}", str(s["n"])))
    rows += [
        single_row("feasible / infeasible plans", f"{r['feasible']} / {r['infeasible']}",
                   f"{r['scenarios']} scenarios"),
        single_row("infeasible without provider and shortfall",
                   str(r["infeasible_without_provider_and_shortfall"]), f"{r['infeasible']} plans"),
        single_row("starts vLLM would refuse (planned context / 500 MiB context)",
                   f"{r['refused_starts_planned_context']} / "
                   f"{r['refused_starts_sim_context_500mib']}", f"{r['instance_starts']} starts"),
        single_row("plans per second", r["plans_per_second"]),
    ]
    return rows


def detection_rows(r: dict[str, Any]) -> list[Row]:
    labels = {"sse_s": "SIGKILL → SSE `available: false`", "status_file_s": "SIGKILL → status.json",
              "api_s": "SIGKILL → `/v1/status`", "hang_suspect_s": "SIGSTOP → `suspect`",
              "hang_down_s": "SIGSTOP → `down`"}
    rows = []
    for profile, p in r["profiles"].items():
        h = p["health"]
        where = (f"{profile} ({h['interval_s']:g} s / {h['timeout_s']:g} s / "
                 f"{h['retry_attempts']:g}, jitter {h['jitter_s']:g} s)")
        for key, label in labels.items():
            if key in p["samples_s"]:
                rows.append(stats_row(f"{where}: {label}, ms", p["samples_s"][key], 1000))
    return rows


def status_api_rows(r: dict[str, Any]) -> list[Row]:
    rounds = r.get("per_round") or [{"gpumgr": r, "bare_uvicorn": r["bare_uvicorn"],
                                     "gpumgr_to_bare_throughput": r["gpumgr_to_bare_throughput"]}]
    conc = f"{r['concurrency']} connections, {r['duration_s']:g} s a round"
    rows = []
    for who in ("gpumgr", "bare_uvicorn"):
        label = who.replace("_", " ")
        runs = [x[who] for x in rounds]
        errors = sum(x["errors"] for x in runs)
        rows += [
            stats_row(f"{label}: requests/s ({conc}; {errors} errors)",
                      [x["requests_per_s"] for x in runs]),
            stats_row(f"{label}: latency p50 of a round, ms", [x["latency_p50_ms"] for x in runs]),
            stats_row(f"{label}: latency p99 of a round, ms", [x["latency_p99_ms"] for x in runs]),
            stats_row(f"{label}: server CPU per request, ms",
                      [x["server_cpu_ms_per_request"] for x in runs if x.get("server_cpu_ms_per_request")]),
        ]
    rows += [
        stats_row("gpumgr / bare throughput", [x["gpumgr_to_bare_throughput"] for x in rounds]),
        stats_row(f"load generator CPU during gpumgr's load, s (of {r['duration_s']:g} s × "
                  f"{r['machine']['cpus']} CPUs)", [x["gpumgr"]["client_cpu_s_during_load"]
                                                     for x in rounds]),
        single_row(f"gpumgr status server idle CPU, % of one core (over {r['idle_s']:g} s)",
                   r["server_idle_cpu_percent"]),
        single_row("gpumgr status server idle RSS, MiB", r["server_idle_rss_mib"]),
    ]
    return rows


def swap_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    ways = list(dict.fromkeys(s["mode"] for s in r["swaps"]))
    for way in ways:
        mine = [s for s in r["swaps"] if s["mode"] == way]
        rows.append(stats_row(f"{way}: swap overhead (wall − new engine's load), s",
                              [s["overhead_s"] for s in mine]))
        rows.append(stats_row(f"{way}: swap wall time, s", [s["wall_s"] for s in mine]))
    for way in ways:
        m = r["summary"][way]
        rows.append(single_row(f"{way}: requests failed / fell back / hung during swaps",
                               f"{m['failed']} / {m['fallback']} / {m['hung']}",
                               f"{m['requests']} requests"))
    return rows


def litellm_filter_rows(r: dict[str, Any]) -> list[Row]:
    return [single_row(f"{case}, µs per pick (best of 3 runs' mean)", us, f"3 × {r['picks']} picks")
            for case, us in r["per_pick_us"].items()]


def idle_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for name, g in r["groups"].items():
        for key, unit in (("cpu_percent_of_one_core", "CPU, % of one core"), ("rss_mib", "RSS, MiB")):
            s = g[key]
            rows.append((f"{name}: {unit} (mean {num(s['mean'])})", num(s["median"]), f"{num(s['max'])} (max)",
                         f"{num(s['min'])}–{num(s['max'])}", f"{g['n']} × {r['sample_s']:g} s"))
    return rows


def router_rows(r: dict[str, Any]) -> list[Row]:
    """Per phase of the outage script, each router: latency (p50 as the median), failed and
    slow requests."""
    rows = []
    modes = r["modes"]
    phases = ["all", *next(iter(modes.values()))["phases"]]
    for phase in phases:
        for mode, res in modes.items():
            x = res["all"] if phase == "all" else res["phases"][phase]
            rows.append((f"{phase}, {mode}: latency, ms ({x['failed']} failed, {x['over_1s']} over "
                         f"{r.get('slow_s', 1):g} s)", num(x["p50_ms"]), num(x["p99_ms"]),
                         f"≤ {num(x['max_ms'])}", f"{x['requests']} requests"))
    return rows


def owner_failover_rows(r: dict[str, Any]) -> list[Row]:
    """Per config: a stopped vLLM model's request time (p50 as the median, min–max), how many
    were answered and how many by the fallback."""
    return [(f"{x['config']}: request to the stopped model, s ({x['ok']} answered, "
             f"{x['by_fallback']} by the fallback)", num(x["p50_s"]), f"{num(x['max_s'])} (max)",
             f"{num(x['min_s'])}–{num(x['max_s'])}", f"{x['requests']} requests")
            for x in r["rows"]]


def suite_rows(r: dict[str, Any]) -> list[Row]:
    return [single_row(f"`{r.get('command') or 'bash scripts/test.sh'}` wall time, s", r["duration_s"]),
            single_row("pytest's summary", r.get("summary") or DASH)]


def soak_rows(r: dict[str, Any]) -> list[Row]:
    """The chaos soak: convergence after each step, requests, checks, then operations by kind."""
    n_ops = f"{r['operations']} steps"
    rows = [stats_row("convergence after a step, s", r["converge_s"]),
            single_row("requests sent / failed (open loop, expected during chaos)",
                       f"{r['requests_sent']} / {r['requests_failed']}", n_ops),
            single_row("longest request, s (client timeout 2 s)", r["request_longest_s"], n_ops),
            single_row("invariant checks passed", r["checks_passed"], n_ops),
            single_row("broken invariant", (r.get("failure") or "none").splitlines()[0], n_ops)]
    by: dict[str, list[str]] = {}
    for x in r["by_kind_outcome"]:
        by.setdefault(x["kind"], []).append(f"{x['outcome']} {x['n']}")
    rows += [single_row(f"operations: {kind}", ", ".join(parts), n_ops) for kind, parts in by.items()]
    return rows


def generic_rows(r: dict[str, Any]) -> list[Row]:
    """Every numeric leaf of a result this module has no table for (at most 40)."""
    rows: list[Row] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if prefix == "" and k in ("benchmark", "measured_at", "machine"):
                    continue
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(single_row(prefix, value))

    walk("", r)
    return rows[:40]


def policy_markdown(r: dict[str, Any]) -> list[str]:
    """The lifecycle policies: one row per (trace, sleep mode, policy), then the issue's goals
    as the benchmark evaluated them (its own table: the five-column one does not fit)."""
    head = ("| trace | sleep mode | policy | local | local (shifted) | by phase 7b / 14b / mixed / "
            "idle | swaps | p50 | p95 | to the cloud | waited: p95 (n) |")
    out = [head, "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for x in r["results"].values():
        phases = " / ".join(f"{100 * v:.0f}" for v in x["local_share_by_phase"].values())
        waited = f"{x['waited_p95_s']:.2f} s ({x['waited']})" if x["waited"] else DASH
        out.append(f"| {x['trace']} | {'on' if x['sleep_mode'] else 'off'} | {x['policy']} | "
                   f"{100 * x['local_share']:.1f} % | {100 * x['local_share_shifted']:.1f} % | "
                   f"{phases} % | {x['swaps']} | {x['p50_s']:.2f} s | {x['p95_s']:.2f} s | "
                   f"{x['to_cloud']} | {waited} |")
    goals = r.get("goals") or []
    if goals:
        out += ["", "The issue's goals, as measured in this run:", ""]
        out += [f"- {'met' if g['met'] else '**missed**'}: {g['goal']}: {g['measured']}"
                for g in goals]
    return out + [""]


MARKDOWN: dict[str, Callable[[dict[str, Any]], list[str]]] = {"policy": policy_markdown}
"""Benchmarks whose result is rendered as their own markdown instead of the common table."""

TABLES: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "plan_efficiency": plan_efficiency_rows,
    "detection": detection_rows,
    "status_api": status_api_rows,
    "swap": swap_rows,
    "litellm_filter": litellm_filter_rows,
    "idle": idle_rows,
    "suite": suite_rows,
    "router": router_rows,
    "soak": soak_rows,
    "owner_failover": owner_failover_rows,
}

TITLES = {
    "plan_efficiency": "Plan efficiency (VRAM planner)",
    "litellm_filter": "LiteLLM callback: cost per pick",
    "status_api": "Status API throughput against a bare uvicorn app",
    "idle": "Daemon idle CPU and RSS",
    "detection": "Failure detection latency",
    "swap": "Swap overhead and failed requests: gpumgr against the old script",
    "router": "Router: LiteLLM with and without the callback over an outage",
    "suite": "The test suite's own duration",
    "soak": "Chaos soak: random operations under traffic, invariants after every step",
    "metrics": "/metrics with 8 backends: server CPU per scrape before and after the lifecycle metrics",
    "owner_failover": "The owner's LiteLLM config: a stopped vLLM model, as is, with the callback line, merged",
    "policy": "Lifecycle policies: manual, swap on every miss, demand (with and without hold_s)",
}

READING = {
    "soak": "Each step is one operation (many are refused: stopping what is stopped, a start that "
    "does not fit, a second mutation while one runs; those count as outcomes, not failures); "
    "convergence is the wait, after the operation answered, until the status, `desired.json` and "
    "the processes agree. Requests fail by design while engines stop, die, sleep or hang; "
    "`bench/soak.py --steps 2000` runs it longer.",
    "plan_efficiency": "A share below 1.0 where nothing is pinned or capped is the rounding of each "
    "slice down to 0.01 of the card; the low tail of the overall share is plans where a pin or the "
    "KV cap (no more cache than max_num_seqs × max_model_len needs) leaves memory unused on purpose. "
    "Refused starts must be 0.",
    "litellm_filter": "Added to every pick LiteLLM makes; compare with a request's milliseconds.",
    "status_api": "On this 2-core machine the Python load generator shares the CPUs with the "
    "server (it burns more CPU than either server), so requests/s measures the pair and moves "
    "with the shared machine's load (see the spread over rounds); the server CPU per request is "
    "the steadier comparison of gpumgr's app against the bare one.",
    "idle": "Idle cost is mostly probing (the engine every 0.5 s, Ollama every 2 s) and the 2 s "
    "status heartbeat. A 1 s window measures CPU in 10 ms ticks, so single samples read 0, 1, 2 … %; "
    "the median over 30 windows is the figure to quote.",
    "detection": "A dead engine is seen by the supervisor's exit watch (pidfd), independent of "
    "the probe settings; a hung one only by probes: `suspect` (skipped by the router's callback) "
    "after one failed probe, `down` after retry_attempts failures.",
    "swap": "`failed` reached an engine and got an error or no answer; `fell back` found no model "
    "up (a router sends those down the fallback chain instead of failing them); `hung` took over "
    "5 s. `gpumgr restart (direct)` is a client that ignores the status and sends to the port "
    "all along.",
    "router": "`failed`: not HTTP 200 or no answer; the spread column has only the maximum (the "
    "benchmark records no minimum). The callback's own cost per pick is the LiteLLM callback "
    "section's.",
    "owner_failover": "`as is` waits out the owner's own retries and back-off (num_retries 3, "
    "retry_after 5) before the fallback; with the callback line the emptied group goes to the "
    "fallbacks without a retry. Each request carries a fresh prompt, so the owner's cache "
    "(Redis, at a closed port here) never answers it.",
    "suite": "The whole CI suite including the real-LiteLLM-proxy and fault tests, on the same "
    "shared machine.",
    "policy": "The sleep-mode rows were measured again after the fix that publishes a wake as "
    "`starting` from its `/wake_up` call (`remeasured` in the JSON); the other rows never wake "
    "an engine. Where demand loses local share (interleaved, sleep mode on: 34 of 404 "
    "requests): 16 are the 1-s 7B bursts, left to the fallbacks on purpose (every-miss buys "
    "them with 8 of its 10 swaps, and without sleep mode with waits up to 2.7 s); 16 are the "
    "first 4 s of the 14B phase (the lead over the 4-s window shows ~0.6 × window_s after the "
    "shift, plus up to 1 s of report batching, then the wake); 2 are idle-phase requests before "
    "the idle swap back. Every-miss without sleep mode loses the old model's requests that "
    "arrive during its ~2-s swaps (they go to the router and its fallbacks, as through a "
    "load-on-request proxy that does not queue them), hence its 91.8 %; with sleep mode its "
    "swaps take ~0.3 s and it serves everything locally. The alternating trace (5-s bursts, "
    "50/50) is the contrast: a burst longer than 0.6 × window_s looks like a shift, the minimum "
    "residency then holds the model into the next burst, and demand serves the mixed phase "
    "worse than manual (25 % against 50 %); a longer window_s keeps the model in place there "
    "at the price of slower shifts. `hold_s` held 4 requests in the sleep-mode run (a wake is "
    "announced with its last measured time, ~0.3 s here).",
}


def section(step: dict[str, Any]) -> str:
    name = step["name"]
    out = [f"## {TITLES.get(name, name)}", ""]
    doc = docstring(name) if step["kind"] == "benchmark" else ""
    if step["status"] == "missing":
        out += [f"**Missing**: `bench/{name}.py` did not exist when this report was generated."
                if not step.get("note") else f"**Missing**: {step['note']}.", ""]
        return "\n".join(out)
    if doc:
        out += ["What and how (the script's docstring):", "",
                *(f"> {ln}" if ln else ">" for ln in doc.splitlines()), ""]
    if step["kind"] == "suite":
        out += [READING["suite"], ""]
    measured = (step.get("result") or {}).get("measured_at")
    how = f"`{step.get('command', '?')}`"
    if step.get("wall_s") is not None:
        how += f", {step['wall_s']:g} s"
    if step.get("loadavg_before"):
        how += (f", load average {step['loadavg_before'][0]:g} before and "
                f"{step.get('loadavg_after', ['?'])[0]:g} after")
    if step.get("reused"):
        how += f" (reused: measured {measured})"
    out += [f"Run: {how}.", ""]
    if step["kind"] == "suite" and step.get("result"):
        r = step["result"]
        out += [table(suite_rows(r)), ""]
        if r.get("failed_tests"):
            out += [f"**{len(r['failed_tests'])} test(s) failed** in this run (exit status "
                    f"{r.get('rc')}): " + ", ".join(f"`{t}`" for t in r["failed_tests"]) + ".", ""]
        out += [f"Raw: [`docs/benchmarks/{name}.json`](benchmarks/{name}.json).", ""]
        return "\n".join(out)
    if step["status"] != "ok":
        out += [f"**Failed** (exit status {step.get('rc')}); the end of its output:", "", "```",
                step.get("output_tail", "").rstrip(), "```", ""]
        return "\n".join(out)
    result = step["result"]
    if name in MARKDOWN:
        out += MARKDOWN[name](result)
    else:
        out += [table(TABLES.get(name, generic_rows)(result)), ""]
    if name in READING and name != "suite":
        out += [READING[name], ""]
    out += [f"Raw: [`docs/benchmarks/{name}.json`](benchmarks/{name}.json).", ""]
    return "\n".join(out)


def headline(steps: dict[str, dict[str, Any]]) -> list[str]:
    """A few numbers an operator asks for first, each from its section's result."""
    lines = []

    def result(name: str) -> dict[str, Any] | None:
        s = steps.get(name)
        return s.get("result") if s and s["status"] == "ok" else None

    if r := result("detection"):
        for profile, p in r["profiles"].items():
            s = p["samples_s"]
            lines.append(f"- Detection ({profile}): a killed engine is off the status in "
                         f"{num(statistics.median(s['api_s']) * 1000)} ms (median), a hung one "
                         f"`suspect` in {num(statistics.median(s.get('hang_suspect_s') or [0]))} s "
                         f"and `down` in {num(statistics.median(s['hang_down_s']))} s.")
    if r := result("swap"):
        parts = [f"{way}: overhead {num(m['overhead_s_median'])} s, {m['failed']} of "
                 f"{m['requests']} requests failed" for way, m in r["summary"].items()]
        lines.append("- Swap (median overhead; failed requests): " + "; ".join(parts) + ".")
    if r := result("status_api"):
        lines.append(f"- Status API: {num(r['requests_per_s'])} req/s against a bare uvicorn "
                     f"app's {num(r['bare_uvicorn']['requests_per_s'])} serving the same bytes "
                     f"(medians of {r.get('rounds', 1)} rounds, client-bound on 2 CPUs); "
                     f"{num(r['server_cpu_ms_per_request'])} against "
                     f"{num(r['bare_uvicorn']['server_cpu_ms_per_request'])} ms of server CPU per "
                     "request.")
    if r := result("idle"):
        d = r["groups"]["daemon"]
        cpu = d["cpu_percent_of_one_core"]
        lines.append(f"- Idle daemon: {num(cpu['median'])} % of one core (median of 1 s windows; "
                     f"mean {num(cpu['mean'])} %), RSS {num(d['rss_mib']['median'])} MiB.")
    if r := result("plan_efficiency"):
        lines.append(f"- Planner: hands out {num(r['share_where_none_capped_or_pinned']['median'])} "
                     "of usable memory where nothing is pinned or capped; "
                     f"{r['refused_starts_planned_context']} starts vLLM would refuse.")
    if r := result("router"):
        parts = [f"{mode}: {res['all']['failed']} failed and {res['all']['over_1s']} over 1 s of "
                 f"{res['all']['requests']} requests, p50 {num(res['all']['p50_ms'])} ms"
                 for mode, res in r["modes"].items()]
        lines.append("- Router through the outage script: " + "; ".join(parts) + ".")
    if r := result("owner_failover"):
        parts = [f"{x['config']} p50 {num(x['p50_s'])} s" for x in r["rows"]]
        lines.append("- The owner's LiteLLM config, a request to a stopped vLLM model: "
                     + "; ".join(parts) + ".")
    if r := result("litellm_filter"):
        lines.append(f"- LiteLLM callback: {num(min(r['per_pick_us'].values()))}–"
                     f"{num(max(r['per_pick_us'].values()))} µs per pick.")
    if (s := steps.get("suite")) and (r := s.get("result")):
        lines.append(f"- Test suite: {num(r['duration_s'])} s ({r.get('summary') or r['source']}).")
    return lines


def render(run: dict[str, Any]) -> str:
    m = run["machine"]
    steps = {s["name"]: s for s in run["steps"]}
    missing = [s["name"] for s in run["steps"] if s["status"] != "ok" and not s.get("result")]
    out = [
        "# Benchmarks",
        "",
        "Generated by `.venv/bin/python bench/run_all.py` (one command: every benchmark in `bench/` "
        "with the parameters shown, then the test suite); do not edit by hand. The raw results "
        "are in [`docs/benchmarks/`](benchmarks/), one JSON per benchmark plus `run.json` (the "
        "machine, the commands, their exit status and the load average around each). "
        "`bench/run_all.py --render-only` regenerates this page from them.",
        "",
        "Everything here runs on the simulated GPU, engine, Ollama and hub of `gpumgr.sim` "
        "(real processes speaking the real protocols); the real-GPU check is separate: see "
        "[gpu-check.md](gpu-check.md) for its table (NVML inventory, attribution and memory "
        "release measured on an H200).",
        "",
        "## Machine",
        "",
        f"- {m.get('cpus')} CPUs ({m.get('cpu_model') or 'model unknown'}), "
        f"{m.get('memory_gib', '?')} GiB memory; Python {m.get('python')}; {m.get('platform')}.",
        f"- Run from {run['started_at']} to {run.get('finished_at', '?')}; benchmarks "
        f"{run.get('benchmarks_wall_s', '?')} s of it.",
        *([f"- Reused from an earlier run (`--reuse`, measured when each section says): "
           + ", ".join(s["name"] for s in run["steps"] if s.get("reused")) + "."]
          if any(s.get("reused") for s in run["steps"]) else []),
        f"- Load average (1, 5, 15 min) at the start {run['loadavg_start']}, at the end "
        f"{run.get('loadavg_end')}. **The machine is shared**: other engineers were building and "
        "running tests on it at the same time, so latencies and throughput here are pessimistic "
        "and noisier than on an idle box; each section gives the load average around its run.",
        "",
        "## Headline",
        "",
        *headline(steps),
    ]
    if missing:
        out += ["", "Not measured in this run: " + ", ".join(
            f"{name} ({steps[name]['status']})" for name in missing) + "."]
    out.append("")
    for step in run["steps"]:
        out.append(section(step))
    out += gpu_check_tables()
    return "\n".join(out).rstrip() + "\n"


GPU_CHECK = BENCH_DIR.parent / "docs" / "gpu-check.md"
GPU_SECTIONS = ("## Expected against observed", "## gpu-selfcheck")
"""The sections of docs/gpu-check.md whose first table this page repeats (the real-GPU runs)."""


def gpu_check_tables() -> list[str]:
    """The real-GPU tables, taken from docs/gpu-check.md as they are (measured on a lent H200
    by ``scripts/gpu-check.sh`` and ``scripts/gpu-selfcheck.sh``), so this page has every
    number in one place without a second copy to keep in step by hand."""
    try:
        lines = GPU_CHECK.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = ["", "## Real GPU (from docs/gpu-check.md)", "",
           "Measured on a lent NVIDIA H200 (driver 580.159.04); how and what it means: "
           "[gpu-check.md](gpu-check.md).", ""]
    for heading in GPU_SECTIONS:
        start = next((i for i, x in enumerate(lines) if x.startswith(heading)), None)
        if start is None:
            continue
        out += [f"### {lines[start].lstrip('#').strip()}", ""]
        rows = []
        for x in lines[start + 1:]:
            if x.startswith("## "):
                break
            if x.startswith("|"):
                rows.append(x)
            elif rows:
                break
        out += rows + [""]
    return out
