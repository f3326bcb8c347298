"""Benchmark: a request to a stopped vLLM model through a real LiteLLM 1.108.7 proxy on the
owner's own config (tests/data/owner-dialect/litellm-config.yaml: num_retries 3, retry_after 5,
allowed_fails 3, cooldown_time 30), before and after the one callback line (issue 17).

Not a test (tests/test_litellm_owner_config.py pins p50 <= 0.5 s with the line). Runs that
test's stack (gpumgr daemon --simulate, simulated Ollama, fake Ollama Cloud), stops the engine
with ``gpumgr stop``, then sends requests one after another to the stopped model's router name:

- ``as is``: the owner's file, addresses only (LiteLLM alone: retries and back-off);
- ``callback line``: plus ``callbacks: [gpumgr.integrations.litellm.status_filter]``;
- ``--merge``: ``gpumgr litellm-config --merge`` of the owner's file.

Prints a table and writes ``bench/results/owner_failover.json`` (``bench/run_all.py`` runs it
with these defaults; it needs the LiteLLM proxy, like ``bench/router.py``).

    PYTHONPATH=daemon .venv/bin/python bench/owner_failover.py [--requests 15] [--as-is 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _report import header, results_path, write_result

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the e2e stack lives with the tests


def measure(name: str, n: int, **stack_kwargs: Any) -> dict[str, Any]:
    from test_litellm_owner_config import VLLM_NAME, ask_fresh, owner_stack, stop_engine

    with tempfile.TemporaryDirectory(prefix="gpumgr-owner-") as tmp, \
            owner_stack(Path(tmp), **stack_kwargs) as s:
        stop_engine(s)
        fallback = s.ollama.base_url.rstrip("/")
        results = [ask_fresh(s, VLLM_NAME) for _ in range(n)]
    took = sorted(r.took_s for r in results)
    return {
        "config": name, "requests": n,
        "ok": sum(r.status == 200 for r in results),
        "by_fallback": sum(r.api_base.rstrip("/") == fallback for r in results),
        "p50_s": round(statistics.median(took), 3),
        "min_s": round(took[0], 3), "max_s": round(took[-1], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=15)
    ap.add_argument("--as-is", type=int, default=3, help="requests on the unedited file (slow)")
    ap.add_argument("--before", type=Path, default=None, metavar="DAEMON_DIR",
                    help="also measure the callback line with the callback of another checkout "
                    "(its daemon/ directory, e.g. the one before issue 17)")
    args = ap.parse_args()
    from test_litellm_owner_config import as_is, merged_by_gpumgr, with_callback_line

    rows = [measure("as is", args.as_is, edit=as_is),
            measure("callback line", args.requests, edit=with_callback_line),
            measure("--merge", args.requests, edit=merged_by_gpumgr)]
    if args.before is not None:
        rows.insert(1, measure("line, before", args.as_is, edit=with_callback_line,
                               callback_from=args.before))
    print(f"{'config':<16}{'requests':>9}{'ok':>5}{'fallback':>9}{'p50 s':>9}{'min s':>9}"
          f"{'max s':>9}")
    for r in rows:
        print(f"{r['config']:<16}{r['requests']:>9}{r['ok']:>5}{r['by_fallback']:>9}"
              f"{r['p50_s']:>9}{r['min_s']:>9}{r['max_s']:>9}")
    write_result({**header("owner_failover"), "rows": rows}, results_path("owner_failover"))


if __name__ == "__main__":
    main()
