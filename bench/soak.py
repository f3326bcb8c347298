"""The chaos soak (issue 18), longer than CI runs it: the same seeded random operations under
open-loop client traffic, with every invariant checked after every step
(``tests/reliability/soak.py`` holds the logic; ``tests/reliability/test_chaos_soak.py`` runs
it at CI size).

Runs ``gpumgr daemon --simulate`` with the example registry's shape (the 7B and the 14B on one
port, deepseek on another, all with ``swap_mode: sleep``; a simulated Ollama, a fake Ollama
Cloud that needs a key, the simulated hub as its own process) and plays ``--steps`` operations
drawn from ``--seed`` (several seeds: ``--seeds 1,2,3``). Prints a table of the operations by
kind and outcome, the convergence time after each step (p50/p99), the requests sent and failed
(failures are expected while engines stop, die or sleep: the soak counts them, it does not
judge them) and the invariant checks passed; writes ``bench/results/soak.json``. A broken
invariant stops the run with the seed, the step and the operation list (exit 1).

    .venv/bin/python bench/soak.py [--steps 2000] [--seeds 1] [--rate 6] [--promotions] [--verbose]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the soak lives with the reliability tests

from _report import header, print_rows, results_path, write_result  # noqa: E402

from reliability.soak import SoakFailure, SoakResult, run_soak  # noqa: E402

RESULTS = results_path("soak")


def summary(results: list[SoakResult]) -> dict[str, Any]:
    records = [r for res in results for r in res.records]
    converge = sorted(r.converge_s for r in records)
    requests: Counter[str] = Counter()
    for res in results:
        requests.update(res.requests)
    sent = sum(n for k, n in requests.items() if not k.startswith("not sent"))
    by = Counter((r.op.kind, r.outcome.split(":", 1)[0]) for r in records)
    return {
        "operations": len(records),
        "by_kind_outcome": [{"kind": k, "outcome": o, "n": n} for (k, o), n in sorted(by.items())],
        "converge_s": [round(x, 4) for x in converge],
        "converge_p50_s": statistics.median(converge) if converge else None,
        "converge_p99_s": converge[min(len(converge) - 1, round(0.99 * (len(converge) - 1)))] if converge else None,
        "converge_max_s": converge[-1] if converge else None,
        "op_s_p50": statistics.median(r.took_s for r in records) if records else None,
        "requests": dict(requests),
        "requests_sent": sent,
        "requests_failed": sent - requests["200"],
        "request_longest_s": max((res.request_longest_s for res in results), default=0.0),
        "checks_passed": sum(res.checks_passed for res in results),
        "duration_s": sum(res.duration_s for res in results),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", default="1", help="comma-separated seeds, each a run of --steps")
    ap.add_argument("--rate", type=float, default=6.0, help="client requests per second (open loop)")
    ap.add_argument("--verbose", action="store_true", help="one line per step")
    ap.add_argument("--promotions", action="store_true",
                    help="also reloads that mark a standby provider active (finds known bugs)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    results: list[SoakResult] = []
    failure = ""
    for seed in seeds:
        print(f"seed {seed}: {args.steps} steps…", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix="gpumgr-soak-"))
        try:
            results.append(run_soak(tmp, seed, args.steps, rate_per_s=args.rate,
                                    promotions=args.promotions,
                                    say=print if args.verbose else lambda _line: None))
        except SoakFailure as exc:
            failure = str(exc)
            if exc.result is not None:
                results.append(exc.result)
            print(failure, file=sys.stderr)
            print(f"kept {tmp} (the daemon's and the engines' logs)", file=sys.stderr)
            break
        shutil.rmtree(tmp, ignore_errors=True)
    s = summary(results)
    print(f"\n{'kind':<20} {'outcome':<14} {'n':>5}")
    for row in s["by_kind_outcome"]:
        print(f"{row['kind']:<20} {row['outcome']:<14} {row['n']:>5}")
    print()
    print_rows([
        ("seeds", ", ".join(str(r.seed) for r in results) or "-"),
        ("operations", s["operations"]),
        ("duration", f"{s['duration_s']:.1f} s"),
        ("convergence after a step p50 / p99 / max",
         f"{s['converge_p50_s'] or 0:.3f} / {s['converge_p99_s'] or 0:.3f} / {s['converge_max_s'] or 0:.3f} s"),
        ("requests sent / failed", f"{s['requests_sent']} / {s['requests_failed']}"),
        ("requests by outcome", s["requests"]),
        ("longest request", f"{s['request_longest_s']:.2f} s (client timeout 2 s)"),
        ("invariant checks passed", s["checks_passed"]),
        ("failure", failure.splitlines()[0] if failure else "none"),
    ])
    result = {**header("soak"), "steps": args.steps, "seeds": [r.seed for r in results],
              "rate_per_s": args.rate, "promotions": args.promotions, "failure": failure or None, **s}
    write_result(result, RESULTS)
    return 1 if failure else 0


if __name__ == "__main__":
    raise SystemExit(main())
