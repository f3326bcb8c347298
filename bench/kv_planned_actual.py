"""Planned against actual KV cache of the simulated engine, vLLM 0.33 against 0.34, and the cap
(``--gpu-memory-utilization``) against an exact size (``--kv-cache-memory-bytes``).

Real engine processes (``gpumgr.sim.vllm``) on a simulated 16 GiB card, Qwen2.5-7B-AWQ-sized
weights, at several fractions; in half of the runs another process takes memory on the card
while the engine loads (after gpumgr planned it, before the engine's warm-up), the case the
0.34 memory model changes. For each run: did it start, the KV cache tokens it reports (read the
way the daemon reads them: committed blocks, else "GPU KV cache size"), and the error against
the plan's KV tokens. Modes:

* ``0.33 cap``: vLLM 0.33, the fraction (today's gpumgr);
* ``0.34 cap``: vLLM 0.34 with the planned fraction as the cap (the extensible KV cache on);
* ``0.34 exact``: vLLM 0.34 with ``--kv-cache-memory-bytes`` = the planned KV bytes (which turns
  the extensible cache off: the 0.33 start check and sizing apply).

Usage: python bench/kv_planned_actual.py [--others-mib 6000]
Writes bench/results/kv_planned_actual.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import header, print_rows, results_path, write_result

from gpumgr.engines.vllm_log import last_error_line, parse_memory_report
from gpumgr.modelfiles import header_only_safetensors
from gpumgr.sim.gpu import SimGpuSpec, SimGpuState, sim_uuid
from gpumgr.sim.vllm_engine import memory as mem

MIB, GIB = 1 << 20, 1 << 30
TOTAL_MIB = 16384
WEIGHTS = int(5.2 * GIB)
KV_PER_TOKEN = 28 * 2 * 4 * 128 * 2  # Qwen2.5-7B: 28 layers, K+V, 4 KV heads, 128 dims, fp16
CONFIG = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "num_attention_heads": 28,
          "num_key_value_heads": 4, "num_hidden_layers": 28, "max_position_embeddings": 32768,
          "torch_dtype": "float16", "quantization_config": {"quant_method": "awq"}}
UUID = sim_uuid(0)


def planned_kv_bytes(fraction: float) -> int:
    return mem.capacity_tokens(TOTAL_MIB * MIB, fraction, WEIGHTS, 512 * MIB, 384 * MIB,
                               KV_PER_TOKEN) * KV_PER_TOKEN


def run_one(tmp: Path, snap: Path, state: SimGpuState, fraction: float, mode: str,
            others_mib: int) -> dict[str, Any]:
    state.release(os.getpid())
    version = "0.33.0" if mode == "0.33 cap" else "0.34.0"
    planned = planned_kv_bytes(fraction)
    flags = ["--kv-cache-memory-bytes", str(planned)] if mode == "0.34 exact" else []
    log = tmp / f"e-{mode.replace(' ', '_')}-{fraction}-{others_mib}.log"
    argv = [sys.executable, "-m", "gpumgr.sim.vllm", "serve", str(snap), "--port", "1",
            "--gpu-memory-utilization", str(fraction), "--max-model-len", "8192",
            "--dtype", "half", "--host", "127.0.0.1", *flags]
    env = {**os.environ, "GPUMGR_SIM_GPU_STATE": str(state.path), "CUDA_VISIBLE_DEVICES": UUID,
           "GPUMGR_SIM_LOAD_SECONDS": "0.6", "GPUMGR_SIM_VLLM_VERSION": version}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    if others_mib:
        time.sleep(0.3)  # the engine is loading: someone else takes memory now
        state.allocate(os.getpid(), UUID, others_mib, "other")
    deadline = time.monotonic() + 30
    lines: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None:
        lines = log.read_text(errors="replace").splitlines()
        if any("Application startup complete" in ln or "Errno" in ln for ln in lines):
            break
        time.sleep(0.05)
    started = proc.poll() is None and any("startup complete" in ln for ln in lines)
    proc.terminate()
    proc.wait(timeout=10)
    state.release(os.getpid())
    lines = log.read_text(errors="replace").splitlines()
    report = parse_memory_report(lines)
    actual = report.actual_kv_tokens() if started else None
    planned_tokens = planned // KV_PER_TOKEN
    return {
        "mode": mode, "fraction": fraction, "others_mib": others_mib, "started": started,
        "planned_tokens": planned_tokens, "actual_tokens": actual,
        "error": None if actual is None else round((actual - planned_tokens) / planned_tokens, 4),
        "last_line": (last_error_line(lines) or "") if not started else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--others-mib", type=int, default=6000)
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        snap = tmp / "snap"
        snap.mkdir()
        (snap / "config.json").write_text(json.dumps(CONFIG))
        (snap / "model.safetensors").write_bytes(header_only_safetensors(WEIGHTS))
        state = SimGpuState(tmp / "gpu.json")
        state.ensure([SimGpuSpec(0, UUID, memory_total_mib=TOTAL_MIB, display_used_mib=300)])
        for fraction in (0.5, 0.62, 0.75):
            for others in (0, args.others_mib):
                for mode in ("0.33 cap", "0.34 cap", "0.34 exact"):
                    runs.append(run_one(tmp, snap, state, fraction, mode, others))
    rows = [("mode / fraction / others MiB", "started, planned → actual tokens (error)")]
    for r in runs:
        got = (f"{r['planned_tokens']} → {r['actual_tokens']} ({r['error']:+.1%})" if r["started"]
               else f"refused: {r['last_line'][:70]}")
        rows.append((f"{r['mode']} / {r['fraction']} / {r['others_mib']}", got))
    print_rows(rows)

    def summary(mode: str, others: bool) -> dict[str, Any]:
        sel = [r for r in runs if r["mode"] == mode and bool(r["others_mib"]) == others]
        errs = [r["error"] for r in sel if r["error"] is not None]
        return {"runs": len(sel), "refused": sum(not r["started"] for r in sel),
                "mean_error": round(sum(errs) / len(errs), 4) if errs else None,
                "worst_error": min(errs) if errs else None}

    result = {**header("kv_planned_actual"), "others_mib": args.others_mib, "runs": runs,
              "summary": {f"{m} / {'others took memory' if o else 'alone'}": summary(m, o)
                          for m in ("0.33 cap", "0.34 cap", "0.34 exact") for o in (False, True)}}
    print_rows([(k, json.dumps(v)) for k, v in result["summary"].items()])
    write_result(result, results_path("kv_planned_actual"))


if __name__ == "__main__":
    main()
