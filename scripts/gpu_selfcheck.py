"""gpu-selfcheck: gpumgr's real daemon (real NVML) on a real card, engines holding real memory.

Run by ``scripts/gpu-selfcheck.sh OUTDIR``; see docs/gpu-check.md. Needs gpumgr's dependencies
and torch with CUDA. No model weights and no network: the engines are gpumgr's simulated vLLM
(``python -m gpumgr.sim.vllm``) in CUDA mode (``GPUMGR_SIM_CUDA=1``), which allocates its planned
budget on the card with torch; the weights are the simulated hub's header-only snapshots placed
where ``gpumgr pull`` leaves real ones. Steps, each a row of the final table:

1. ``gpumgr gpus --json`` and ``gpumgr doctor --json`` on the temporary configuration;
2. ``gpumgr daemon`` (no --simulate) starts SELFCHECK_PROVIDERS (default 2) small providers:
   NVML inventory, each engine attributed to its backend by pid, each planned fraction against
   the card's real free memory (vLLM's start check) and the engine's NVML footprint against
   context + fraction × CUDA total;
3. SIGKILL the daemon, start it again: the engines are adopted (same pids, no restart);
4. SIGTERM the daemon: it stops every engine and exits only once NVML shows the memory back
   (timed).

Exit 0 when every row passes, 1 otherwise (or without a GPU: one line saying why).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-selfcheck-out")
PY = os.environ.get("PYTHON", sys.executable)
N_PROVIDERS = int(os.environ.get("SELFCHECK_PROVIDERS", "2"))
SIMULATE = os.environ.get("SELFCHECK_SIMULATE") == "1"
"""Rehearsal without a GPU: the simulated card instead of NVML and CUDA (tests the script)."""
UP_TIMEOUT_S = float(os.environ.get("SELFCHECK_UP_TIMEOUT_S", "180"))
MIB = 1 << 20
CATALOG = [  # (provider, repo, served name): small AWQ repos of the simulated hub's catalog
    ("qwen-7b", "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "qwen-coder-vllm"),
    ("deepseek-6.7b", "TheBloke/deepseek-coder-6.7B-instruct-AWQ", "deepseek-coder-vllm"),
]

rows: list[tuple[str, str, str, bool | None]] = []
facts: dict[str, Any] = {}


def row(name: str, expected: object, observed: object, ok: bool | None) -> None:
    rows.append((name, str(expected), str(observed), ok))
    print(f"  {name}: expected {expected}, observed {observed}, "
          f"{'ok' if ok else 'n/a' if ok is None else 'FAIL'}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, Any, str]:
    p = subprocess.run([PY, "-m", "gpumgr.cli", *args], capture_output=True, text=True,
                       env=env, timeout=timeout, check=False)
    try:
        doc = json.loads(p.stdout) if p.stdout.strip() else None
    except ValueError:
        doc = None
    return p.returncode, doc, p.stderr


def get_json(url: str, timeout: float = 2.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def nvml_read(env: dict[str, str] | None = None, cfg: Path | None = None) -> dict[str, Any]:
    if SIMULATE:
        assert env is not None and cfg is not None
        _, doc, _ = cli(env, "--config-dir", str(cfg), "gpus", "--json")
        return dict(doc or {})
    sys.path.insert(0, str(ROOT / "daemon"))
    from gpumgr.gpu.nvml import NvmlBackend

    return NvmlBackend().read().to_dict()


def wait(cond: Any, timeout_s: float, step_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step_s)
    return None


def write_config(tmp: Path, status_port: int) -> Path:
    cfg = tmp / "config"
    cfg.mkdir()
    lines = ["providers:"]
    for name, repo, served in CATALOG[:N_PROVIDERS]:
        lines += [f"  {name}:", "    type: vllm", f"    base_url: http://127.0.0.1:{free_port()}",
                  "    status: active", "    max_model_len: 8192", "    max_num_seqs: 8",
                  "    models:", f"      - name: {served}", f"        hf_repo: {repo}"]
    (cfg / "providers.yaml").write_text("\n".join(lines) + "\n")
    (cfg / "gpumgr.yaml").write_text(
        f"listen: 127.0.0.1:{status_port}\n"
        f"runtime_dir: {tmp}/run\nstate_dir: {tmp}/state\nlog_dir: {tmp}/log\n"
        f"cache_dir: {tmp}/cache\n"
        f"vllm:\n  command: {PY} -m gpumgr.sim.vllm\n  start_timeout_s: 120\n"
        "  stop_timeout_s: 20\n  memory_release_timeout_s: 30\n"
        "health:\n  interval_s: 0.5\n  timeout_s: 1\n")
    return cfg


def start_daemon(env: dict[str, str], cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen([PY, "-m", "gpumgr.cli", "--config-dir", str(cfg), "daemon"],
                                env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def backends_up(status_url: str, names: list[str]) -> dict[str, Any] | None:
    doc = get_json(status_url)
    if not doc:
        return None
    by = {b["name"]: b for b in doc.get("backends", [])}
    if all(by.get(n, {}).get("state") == "up" for n in names):
        return doc
    return None


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-selfcheck-"))
    status_port = free_port()
    cfg = write_config(tmp, status_port)
    if SIMULATE:
        with open(cfg / "gpumgr.yaml", "a") as f:
            f.write("simulate:\n  gpus:\n    - name: H200 (simulated)\n"
                    "      memory_total_mib: 143771\n      display_used_mib: 0\n"
                    "      compute_capability: '9.0'\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'daemon'}:{os.environ.get('PYTHONPATH', '')}",
           "GPUMGR_SIM_CUDA": "1", "GPUMGR_SIM_LOAD_SECONDS": "1", "GPUMGR_CACHE_DIR":
           str(tmp / "cache")}
    env.pop("GPUMGR_SIMULATE", None)
    if SIMULATE:
        env.pop("GPUMGR_SIM_CUDA")
        env["GPUMGR_SIMULATE"] = "1"
    names = [n for n, _, _ in CATALOG[:N_PROVIDERS]]
    status_url = f"http://127.0.0.1:{status_port}/v1/status"
    daemon: subprocess.Popen[bytes] | None = None
    engine_pids: list[int] = []
    try:
        base = nvml_read(env, cfg)
        if not base.get("available"):
            print(f"gpu-selfcheck: {base.get('error')}", file=sys.stderr)
            return 1
        g0 = base["gpus"][0]
        facts["card"] = {k: g0[k] for k in ("name", "memory_total_mib", "memory_used_mib",
                                             "memory_free_mib", "memory_reserved_mib")}
        facts["driver"] = base.get("driver_version")
        row("NVML inventory (real card)", "available, >= 1 GPU",
            f"{g0['name']}, {g0['memory_total_mib']} MiB, driver {base.get('driver_version')}",
            True)
        context_row(env)
        # weights: the simulated hub's header-only snapshots, where `gpumgr pull` leaves real ones
        rc, _, err = cli(env, "--config-dir", str(cfg), "pull", "--simulate", "--json", *names)
        if rc != 0:
            row("header-only weights placed", "exit 0", f"exit {rc}: {err.strip()[-200:]}", False)
            return 1
        if not SIMULATE:
            os.rename(tmp / "cache" / "simulated-hub", tmp / "cache" / "hub")
        rc, gdoc, _ = cli(env, "--config-dir", str(cfg), "gpus", "--json")
        (OUT / "gpus.json").write_text(json.dumps(gdoc, indent=2))
        row("`gpumgr gpus --json`", "exit 0", f"exit {rc}", rc == 0)
        t = time.monotonic()
        rc, ddoc, _ = cli(env, "--config-dir", str(cfg), "doctor", "--json")
        doctor_s = time.monotonic() - t
        (OUT / "doctor.json").write_text(json.dumps(ddoc, indent=2))
        fails = [c["name"] + ": " + c["summary"] for c in (ddoc or {}).get("checks", [])
                 if c["status"] == "fail"]
        row("`gpumgr doctor --json` (before the daemon)", "no fail",
            f"exit {rc}, {(ddoc or {}).get('counts')}, {doctor_s:.1f} s"
            + (f"; {fails}" if fails else ""), rc == 0)

        # -- the daemon on real NVML ---------------------------------------------------------
        t = time.monotonic()
        daemon = start_daemon(env, cfg, OUT / "daemon.log")
        doc = wait(lambda: backends_up(status_url, names), UP_TIMEOUT_S, 0.25)
        up_s = time.monotonic() - t
        if doc is None:
            last = get_json(status_url)
            row("engines up under the real daemon", "all up",
                json.dumps([(b["name"], b["state"], b.get("detail")) for b in
                            (last or {}).get("backends", [])]), False)
            return 1
        (OUT / "status-up.json").write_text(json.dumps(doc, indent=2))
        row("engines up under the real daemon", f"{len(names)} up",
            f"{len(names)} up in {up_s:.1f} s", True)
        backs = {b["name"]: b for b in doc["backends"]}
        engine_pids = [int(backs[n]["pid"]) for n in names]
        inv = nvml_read(env, cfg)
        gpu = inv["gpus"][0]
        procs = {p["pid"]: p for p in gpu["processes"]}
        doc_procs = {p["pid"]: p for g in doc.get("gpus", []) for p in g.get("processes", [])}
        cuda_total_mib = g0["memory_total_mib"] - (g0.get("memory_reserved_mib") or 0)
        for n in names:
            b = backs[n]
            pid = int(b["pid"])
            owner = doc_procs.get(pid, {}).get("owner")
            row(f"{n}: NVML lists pid, status owner", f"pid {pid}, owner {n}",
                f"{'listed' if pid in procs else 'NOT listed'}, owner {owner}",
                pid in procs and owner == n)
            f = float(b.get("gpu_memory_utilization") or 0)
            budget = f * cuda_total_mib
            used = procs.get(pid, {}).get("used_mib") or 0
            row(f"{n}: NVML per-process MiB vs context + f x CUDA total",
                f"f={f}: {budget:.0f} + context (300..1200)", f"{used} (context {used - budget:.0f})",
                300 <= used - budget <= 1200)
        row("vLLM's free-memory check (real mem_get_info) passed for every planned slice",
            "all started", "all started", True)
        facts["fractions"] = {n: backs[n].get("gpu_memory_utilization") for n in names}
        facts["card_used_mib_with_engines"] = gpu["memory_used_mib"]

        # -- adoption: SIGKILL the daemon, start it again ------------------------------------
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
        alive = [p for p in engine_pids if _alive(p)]
        row("daemon SIGKILL: engines keep running", f"{len(engine_pids)} alive", f"{len(alive)} alive",
            len(alive) == len(engine_pids))
        t = time.monotonic()
        daemon = start_daemon(env, cfg, OUT / "daemon.log")
        doc2 = wait(lambda: backends_up(status_url, names), 60, 0.1)
        adopt_s = time.monotonic() - t
        pids2 = [int({b["name"]: b for b in (doc2 or {}).get("backends", [])}.get(n, {}).get("pid")
                     or 0) for n in names]
        row("restart adopts the engines (same pids)", str(engine_pids),
            f"{pids2} up in {adopt_s:.1f} s", pids2 == engine_pids)

        # -- stop path: SIGTERM the daemon, memory back before it exits ----------------------
        used_before = nvml_read(env, cfg)["gpus"][0]["memory_used_mib"]
        t = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(120)
        stop_s = time.monotonic() - t
        after = nvml_read(env, cfg)["gpus"][0]
        left = [p["pid"] for p in after["processes"] if p["pid"] in engine_pids]
        base_used = g0["memory_used_mib"]
        row("daemon SIGTERM: stops engines, exits after NVML shows memory back",
            f"exit 0; engine pids gone; used ~{base_used} MiB",
            f"exit {rc} in {stop_s:.2f} s; left {left}; used {after['memory_used_mib']} MiB "
            f"(was {used_before})", rc == 0 and not left
            and after["memory_used_mib"] <= base_used + 64)
        facts["stop_s"] = round(stop_s, 3)
        daemon = None
        return 0 if all(ok is not False for *_, ok in rows) else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
        for pid in engine_pids:
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
        _report()
        if (tmp / "log").is_dir():
            shutil.copytree(tmp / "log", OUT / "engine-logs", dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def context_row(env: dict[str, str]) -> None:
    """The card's CUDA context (bare, with cuBLAS) and reserved memory as the planner's row
    (``scripts/cuda_context_row.py``): OUTDIR/cuda_contexts.row.tsv, and appended to
    daemon/gpumgr/plan/cuda_contexts.tsv with SELFCHECK_RECORD=1."""
    if SIMULATE:
        row("CUDA context row for the planner", "measured on a real card", "skipped (simulated)",
            None)
        return
    args = [PY, str(ROOT / "scripts" / "cuda_context_row.py"), "0"]
    if os.environ.get("SELFCHECK_RECORD") == "1":
        args.append("--append")
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    line = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else ""
    if not line:
        row("CUDA context row for the planner", "bare and cuBLAS MiB",
            f"failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:80]}", False)
        return
    (OUT / "cuda_contexts.row.tsv").write_text(line + "\n")
    cc, _name, _drv, bare, cublas, reserved, _src = line.split("\t")
    facts["cuda_context"] = {"compute_capability": cc, "bare_mib": int(bare),
                             "cublas_mib": int(cublas), "reserved_mib": reserved or None}
    row("CUDA context row for the planner (cc, bare / cuBLAS / reserved MiB)",
        "cuBLAS >= bare", f"{cc}: {bare} / {cublas} / {reserved or '?'}", int(cublas) >= int(bare))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _report() -> None:
    (OUT / "summary.json").write_text(json.dumps(
        {"facts": facts, "rows": [dict(zip(("check", "expected", "observed", "ok"), r))
                                  for r in rows]}, indent=2, default=str))
    print(json.dumps(facts, indent=1, default=str))
    w = [max([len(r[i]) for r in rows] + [8]) for i in range(3)]
    print(f"| {'check':<{w[0]}} | {'expected':<{w[1]}} | {'observed':<{w[2]}} | ok |")
    for name, exp, obs, ok in rows:
        mark = "yes" if ok else "n/a" if ok is None else "**no**"
        print(f"| {name:<{w[0]}} | {exp:<{w[1]}} | {obs:<{w[2]}} | {mark} |")


if __name__ == "__main__":
    sys.exit(main())
