"""The gpumgr LiteLLM callback's own cost per pick (``async_filter_deployments``), in process.

The hook runs on every pick LiteLLM makes (first try, retries, fallbacks), so its cost is added
to every request. This measures it on the reference box's registry (the deployments
``gpumgr litellm-config`` generates) against a status document of the same registry, for the
cases that matter: every deployment kept, one dropped, a group emptied, mapping by key versus by
``api_base`` + model (an operator's config without gpumgr keys), and a stale status.

    python bench/litellm_filter.py [--picks N] [--out FILE]

Prints a table and writes ``bench/results/litellm_filter.json``. The end-to-end comparison with a
real proxy (failed requests, requests over 1 s, p50/p99, with and without the callback) is
``bench/router.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from _report import header, print_rows, results_path, write_result  # noqa: E402

from gpumgr.backend_state import BackendState  # noqa: E402
from gpumgr.config import load_config  # noqa: E402
from gpumgr.integrations.litellm import FilterSettings, GpumgrStatusFilter  # noqa: E402
from gpumgr.integrations.litellm.status_view import parse_document  # noqa: E402
from gpumgr.integrations.litellm_config import litellm_config  # noqa: E402
from gpumgr.status.document import DaemonInfo, StatusDocument  # noqa: E402
from gpumgr.status.seed import initial_backends  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "config"


def status_bytes(states: dict[str, str]) -> bytes:
    cfg = load_config(CONFIG, env={})
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    backends = [b.model_copy(update={"state": BackendState(states.get(b.name, "up"))})
                for b in initial_backends(cfg.providers.values())]
    doc = StatusDocument.build(generated_at=t0, daemon=DaemonInfo(pid=1, started_at=t0), gpus=[],
                               backends=backends, adoption_done=True, first_probe_round_done=True)
    return doc.to_json_bytes()


def deployments(keyed: bool) -> dict[str, dict[str, Any]]:
    cfg = load_config(CONFIG, env={})
    out = {}
    for i, entry in enumerate(litellm_config(cfg.providers_file, cfg.mappings)["model_list"]):
        info = {"id": f"d{i}", **(entry["model_info"] if keyed else {})}
        out[entry["model_name"]] = {**entry, "model_info": info}
    return out


def per_pick_us(f: GpumgrStatusFilter, group: list[dict[str, Any]], picks: int) -> float:
    async def run() -> float:
        start = time.perf_counter()
        for _ in range(picks):
            await f.async_filter_deployments("m", group, None)
        return time.perf_counter() - start

    return asyncio.run(run()) / picks * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--picks", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=results_path("litellm_filter"))
    args = ap.parse_args()

    clock = [1000.0]
    f = GpumgrStatusFilter(FilterSettings(), clock=lambda: clock[0], autostart=False)
    f._tasks = [object()]  # type: ignore[list-item]  # no follower: the hook must not start one
    keyed, bare = deployments(True), deployments(False)
    vllm, ollama = "qwen-coder-vllm", "qwen2.5-coder:7b"
    three = [keyed[vllm], keyed["deepseek-coder-6.7b-vllm"], keyed[ollama]]
    cases: list[tuple[str, dict[str, str], list[dict[str, Any]], bool]] = [
        ("1 deployment, kept (by key)", {}, [keyed[vllm]], False),
        ("1 deployment, kept (by api_base+model)", {}, [bare[vllm]], False),
        ("1 deployment, emptied (by key)", {"qwen-7b": "down"}, [keyed[vllm]], False),
        ("3 deployments, all kept", {}, three, False),
        ("3 deployments, one dropped", {"qwen-7b": "down"}, three, False),
        ("3 deployments, status stale", {"qwen-7b": "down"}, three, True),
    ]
    rows: list[tuple[str, object]] = []
    measured: dict[str, float] = {}
    for name, states, group, stale in cases:
        f.followers[0]._set(parse_document(status_bytes(states)))
        clock[0] = f.followers[0].last_seen + (10.0 if stale else 0.0)  # type: ignore[operator]
        per_pick_us(f, group, 500)  # warm caches
        us = min(per_pick_us(f, group, args.picks) for _ in range(3))
        measured[name] = round(us, 2)
        rows.append((name, f"{us:.2f} µs per pick"))
    print("gpumgr LiteLLM callback: cost of async_filter_deployments (best of 3 runs of "
          f"{args.picks} picks, no I/O)")
    print_rows(rows, indent="  ")
    result = {**header("litellm_filter"), "picks": args.picks, "per_pick_us": measured}
    write_result(result, args.out)
    print(json.dumps({"max_per_pick_us": max(measured.values())}))


if __name__ == "__main__":
    main()
