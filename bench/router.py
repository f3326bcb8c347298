"""Benchmark of the router through outages: LiteLLM with gpumgr's callback versus LiteLLM alone.

Not a test. Runs the end-to-end stack of tests/test_litellm_proxy.py (``running_stack``): a
real LiteLLM 1.108.7 proxy (``.venv-litellm`` or ``$GPUMGR_LITELLM_BIN``) on the config
``gpumgr litellm-config`` generates, against ``gpumgr daemon --simulate`` (a 7B engine and its
standby 14B on one port, probed with the daemon's default engine health settings), the
simulated Ollama and a fake Ollama Cloud. Twice: with the callback, and with the same config
minus the callback line (LiteLLM alone, its own cooldowns and fallbacks). Each time the same
outage script runs while requests arrive at a fixed rate (``--rate`` per second in all, split
between the 7B's and the 14B's router names, each request on its own worker so a stuck one never
holds back the next):

1. ``kill``: the engine SIGKILLed (the daemon restarts it), until it is up again + ``--settle-s``;
2. ``hang``: the engine's process group SIGSTOPped for ``--hang-s``, then SIGCONT, + settle;
3. ``swap``: ``gpumgr swap qwen-7b qwen-14b`` and back, + settle;
4. ``daemon``: the daemon SIGKILLed (the engine keeps serving), ``--daemon-dead-s`` of traffic.

For each phase and in all: requests, failed (not HTTP 200 or no answer), over 1 s, p50 and p99
latency. The callback's own cost per pick comes from bench/results/litellm_filter.json
(``bench/litellm_filter.py``). Prints a table and writes ``bench/results/router.json``.

    .venv/bin/python bench/router.py [--rate 10] [--hang-s 10] [--settle-s 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the e2e stack lives with the tests

from _report import header, print_rows, results_path, write_result  # noqa: E402

import test_litellm_proxy as e2e  # noqa: E402  (skips itself when there is no LiteLLM proxy)
from gpumgr.sim.harness import wait_for  # noqa: E402

RESULTS = results_path("router")
SLOW_S = 1.0
NAMES = (e2e.VLLM_NAME, "qwen-coder-14b-vllm")


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(results: list[e2e.Result]) -> dict[str, Any]:
    took = [r.took_s for r in results]
    return {
        "requests": len(results),
        "failed": sum(r.status != 200 for r in results),
        "over_1s": sum(t > SLOW_S for t in took),
        "p50_ms": round(quantile(took, 0.5) * 1000, 1),
        "p99_ms": round(quantile(took, 0.99) * 1000, 1),
        "max_ms": round(max(took, default=0.0) * 1000, 1),
    }


def run_script(stack: e2e.Stack, args: argparse.Namespace) -> dict[str, Any]:
    """The outage script under traffic; each phase's requests, by when they were sent."""
    h = stack.harness
    gap_s = len(NAMES) / args.rate
    senders = [e2e.OpenLoop(stack, name, gap_s=gap_s, workers=int(args.rate * 40) + 8)
               for name in NAMES]
    marks: list[tuple[str, float]] = []

    def phase(name: str, act: Callable[[], None]) -> None:
        marks.append((name, time.monotonic()))
        act()
        time.sleep(args.settle_s)

    def kill() -> None:
        pid = int(h.wait_up(e2e.ENGINE)["pid"])
        os.kill(pid, signal.SIGKILL)
        h.wait_backend(e2e.ENGINE, lambda b: b["available"] and b.get("pid") not in (None, pid),
                       60, "the restarted engine up")

    def hang() -> None:
        pid = int(h.wait_up(e2e.ENGINE)["pid"])
        os.killpg(pid, signal.SIGSTOP)
        try:
            time.sleep(args.hang_s)
        finally:
            os.killpg(pid, signal.SIGCONT)
        h.wait_up(e2e.ENGINE, 60)

    swap_failures: list[str] = []

    def swap() -> None:
        """A swap that fails is a result, not a crash: gpumgr rolls back to the old engine.
        (Without the callback, LiteLLM's fallback traffic reloads the local Ollama model that
        was unloaded for the 14B, which then finds too little memory.)"""
        for old, new in ((e2e.ENGINE, "qwen-14b"), ("qwen-14b", e2e.ENGINE)):
            done = e2e._swap(stack, old, new)
            if done.returncode != 0:
                swap_failures.append(f"{old} -> {new}: {done.stderr.strip().splitlines()[-1][:300]}")
                h.wait_up(old, 60)
                return
            h.wait_up(new, 60)

    def daemon() -> None:
        h.wait_up(e2e.ENGINE)
        assert h.proc is not None
        h.proc.kill()
        h.proc.wait()
        time.sleep(max(0.0, args.daemon_dead_s - args.settle_s))

    for s in senders:
        s.__enter__()
    try:
        time.sleep(args.settle_s)  # all up
        marks.append(("all up", time.monotonic() - args.settle_s))
        for name, act in (("kill", kill), ("hang", hang), ("swap", swap), ("daemon", daemon)):
            phase(name, act)
        marks.append(("end", time.monotonic()))
    finally:
        results = [r for s in senders for r in s.stop()]
    order = sorted(marks[:1] + marks[1:-1], key=lambda m: m[1]) + marks[-1:]
    phases: dict[str, Any] = {}
    for (name, start), (_, end) in zip(order, order[1:]):
        phases[name] = summary([r for r in results if start <= r.sent_at < end])
    return {"all": summary(results), "phases": phases, "swap_failures": swap_failures}


def run_mode(status_filter: bool, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gpumgr-router-") as tmp:
        with e2e.running_stack(Path(tmp), status_filter=status_filter) as stack:
            wait_for(lambda: all(stack.ask(n).status == 200 for n in NAMES), 30, "both names")
            return run_script(stack, args)


def callback_cost() -> dict[str, Any] | None:
    path = results_path("litellm_filter")
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    per_pick = doc.get("per_pick_us", {})
    return {"source": str(path.relative_to(REPO_ROOT)), "measured_at": doc.get("measured_at"),
            "max_per_pick_us": max(per_pick.values(), default=None), "per_pick_us": per_pick}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=10.0, help="requests per second, in all")
    ap.add_argument("--hang-s", type=float, default=10.0)
    ap.add_argument("--settle-s", type=float, default=3.0)
    ap.add_argument("--daemon-dead-s", type=float, default=8.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    started = time.monotonic()
    modes = {"with callback": run_mode(True, args), "LiteLLM alone": run_mode(False, args)}
    cost = callback_cost()
    print(f"LiteLLM 1.108.7 through an outage script, {args.rate:g} requests/s "
          f"(kill, hang {args.hang_s:g} s, swap and back, daemon killed)")
    cols = ("requests", "failed", "over_1s", "p50_ms", "p99_ms", "max_ms")
    print(f"  {'phase':<8} {'router':<14} " + " ".join(f"{c:>9}" for c in cols))
    for phase in ["all", *modes["with callback"]["phases"]]:
        for mode, res in modes.items():
            row = res["all"] if phase == "all" else res["phases"][phase]
            print(f"  {phase:<8} {mode:<14} " + " ".join(f"{row[c]:>9}" for c in cols))
    for mode, res in modes.items():
        for failure in res["swap_failures"]:
            print(f"  swap failed with {mode} (rolled back): {failure}")
    if cost is not None:
        print_rows([("callback cost per pick (max case)", f"{cost['max_per_pick_us']} µs "
                     f"({cost['source']}, {cost['measured_at']})")], indent="  ")
    took = round(time.monotonic() - started, 1)
    print(f"  took {took} s")
    result = {**header("router"), "rate_per_s": args.rate, "hang_s": args.hang_s,
              "settle_s": args.settle_s, "daemon_dead_s": args.daemon_dead_s, "slow_s": SLOW_S,
              "modes": modes, "callback_cost": cost, "took_s": took}
    write_result(result, args.out)


if __name__ == "__main__":
    main()
