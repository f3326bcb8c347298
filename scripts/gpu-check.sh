#!/usr/bin/env bash
# gpu-check: exercise gpumgr's real NVML path on this host's NVIDIA card and say what it saw.
#
#   scripts/gpu-check.sh [OUTDIR]          (default OUTDIR: ./gpu-check-out)
#
# Needs gpumgr and its dependencies importable by $PYTHON (default python3): an installed
# gpumgr, or PYTHONPATH=<repo>/daemon plus the packages. Steps:
#   1. raw NVML facts (driver, CUDA driver version, v1 and v2 memory info, which process-list
#      call answers, compute capability) and `python3 -m gpumgr.cli gpus --json` as it is;
#   2. with torch and CUDA importable: a child process creates a CUDA context, then allocates
#      GPU_CHECK_ALLOC_GIB (default 8) GiB; at each stage `gpus --json` is read again and the
#      memory delta and the per-process attribution (pid, used_mib, pgid) are checked; then the
#      memory is freed in-process, and the child is stopped with SIGTERM the way the daemon's stop
#      path does, timing how long until NVML shows the pid gone and the memory back;
#   3. `gpumgr plan --json` (GPU_CHECK_PLAN: "config" = the configured providers and their
#      downloaded weights (default); "sim-weights" = the repo's example providers with
#      header-only weights from gpumgr's simulated hub, no network, config from
#      GPU_CHECK_EXAMPLE_CONFIG (default <repo>/config); "off");
#   4. a table, expected vs observed; everything also lands in OUTDIR (summary.json, the raw
#      JSON of every read, nvidia-smi's view where it is installed).
# Exit status: 0 every check passed, 1 a check failed or no GPU could be read (one line saying
# why), 2 bad usage. The GPU's settings are never changed; it uses GPU_CHECK_GPU (index, default 0)
# and at most GPU_CHECK_ALLOC_GIB GiB plus one CUDA context of it.
set -uo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-./gpu-check-out}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUTDIR" || { echo "gpu-check: cannot create $OUTDIR" >&2; exit 2; }
export GPU_CHECK_ROOT="$ROOT" GPU_CHECK_OUTDIR="$OUTDIR" GPU_CHECK_PYTHON="$PYTHON"
exec "$PYTHON" - <<'PY'
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
ROOT = os.environ["GPU_CHECK_ROOT"]
OUT = os.environ["GPU_CHECK_OUTDIR"]
PY = os.environ["GPU_CHECK_PYTHON"]
INDEX = int(os.environ.get("GPU_CHECK_GPU", "0"))
ALLOC_GIB = float(os.environ.get("GPU_CHECK_ALLOC_GIB", "8"))
PLAN_MODE = os.environ.get("GPU_CHECK_PLAN", "config")
TOL_MIB = 64           # allocator rounding, the driver's page tables for a large allocation
BACK_TOL_MIB = 16      # "memory back": within this of the level before
RELEASE_TIMEOUT_S = 30.0

summary = {"checks": [], "facts": {}}
rows = []  # (check, expected, observed, ok)


def die(msg):
    print(f"gpu-check: {msg}", file=sys.stderr)
    summary["fatal"] = msg
    save("summary.json", summary)
    sys.exit(1)


def save(name, data):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        if isinstance(data, str):
            f.write(data)
        else:
            json.dump(data, f, indent=2, default=str)


def check(name, expected, observed, ok):
    rows.append((name, str(expected), str(observed), ok))
    summary["checks"].append(
        {"check": name, "expected": str(expected), "observed": str(observed), "ok": ok}
    )


def fact(name, value):
    summary["facts"][name] = value


# -- imports: gpumgr and NVML, each a one-line failure ------------------------------------
try:
    import pynvml
except Exception as exc:  # noqa: BLE001
    die(f"nvidia-ml-py (pynvml) is not importable: {exc!r}")
try:
    from gpumgr.gpu import MIB as _  # noqa: F401
    from gpumgr.gpu.attribution import attribute
    from gpumgr.gpu.nvml import NvmlBackend
except Exception as exc:  # noqa: BLE001
    die(f"gpumgr is not importable ({exc!r}); set PYTHONPATH=<repo>/daemon or install it")


def cli(*args, env=None, name=None):
    """`python3 -m gpumgr.cli ARGS`; (rc, parsed JSON or None, stderr)."""
    e = dict(os.environ)
    e.pop("GPUMGR_SIMULATE", None)
    e.update(env or {})
    p = subprocess.run(
        [PY, "-m", "gpumgr.cli", *args], capture_output=True, text=True,
        stdin=subprocess.DEVNULL, env=e, timeout=120,
    )
    try:
        data = json.loads(p.stdout) if p.stdout.strip() else None
    except json.JSONDecodeError:
        data = None
    if name:
        save(name, p.stdout if data is None else data)
    return p.returncode, data, p.stderr.strip()


def card(doc):
    for g in (doc or {}).get("gpus", []):
        if g["index"] == INDEX:
            return g
    return None


def proc(g, pid):
    for p in (g or {}).get("processes", []):
        if p["pid"] == pid:
            return p
    return None


# -- 1. gpumgr gpus --json against real NVML ---------------------------------------------
rc, doc, err = cli("gpus", "--json", name="gpus-baseline.json")
if doc is None or not doc.get("available"):
    reason = (doc or {}).get("error") or err.splitlines()[-1:] or [f"exit {rc}"]
    die(reason if isinstance(reason, str) else reason[0])
base = card(doc)
if base is None:
    die(f"no GPU with index {INDEX} ({len(doc['gpus'])} found)")
fact("gpus_baseline", base)
fact("driver_version", doc.get("driver_version"))
fact("gpumgr_warnings", doc.get("warnings"))

# -- raw NVML facts, read beside gpumgr (what it chose and what it did not) ----------------
def raw_nvml(pids=()):
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(INDEX)
        r = {}
        m1 = pynvml.nvmlDeviceGetMemoryInfo(h)
        r["memory_v1"] = {"total": m1.total, "free": m1.free, "used": m1.used}
        try:
            m2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            r["memory_v2"] = {"total": m2.total, "reserved": m2.reserved,
                              "free": m2.free, "used": m2.used}
        except Exception as exc:  # noqa: BLE001
            r["memory_v2"] = f"unavailable: {exc!r}"
        for api in ("nvmlDeviceGetComputeRunningProcesses_v3",
                    "nvmlDeviceGetComputeRunningProcesses_v2",
                    "nvmlDeviceGetComputeRunningProcesses",
                    "nvmlDeviceGetGraphicsRunningProcesses_v3"):
            fn = getattr(pynvml, api, None)
            if fn is None:
                r[api] = "not in this nvidia-ml-py"
                continue
            try:
                r[api] = [
                    {k: getattr(p, k, None) for k in
                     ("pid", "usedGpuMemory", "gpuInstanceId", "computeInstanceId")}
                    for p in fn(h)
                ]
            except Exception as exc:  # noqa: BLE001
                r[api] = f"error: {exc!r}"
        return r
    finally:
        pynvml.nvmlShutdown()


def static_facts():
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(INDEX)
        f = {}
        for key, call in (
            ("nvml_version", lambda: pynvml.nvmlSystemGetNVMLVersion()),
            ("cuda_driver_version", lambda: pynvml.nvmlSystemGetCudaDriverVersion_v2()),
            ("name", lambda: pynvml.nvmlDeviceGetName(h)),
            ("compute_capability", lambda: pynvml.nvmlDeviceGetCudaComputeCapability(h)),
            ("pci_bus_id", lambda: pynvml.nvmlDeviceGetPciInfo(h).busId),
            ("persistence_mode", lambda: pynvml.nvmlDeviceGetPersistenceMode(h)),
            ("compute_mode", lambda: pynvml.nvmlDeviceGetComputeMode(h)),
            ("mig_mode", lambda: pynvml.nvmlDeviceGetMigMode(h)),
            ("bar1_total", lambda: pynvml.nvmlDeviceGetBAR1MemoryInfo(h).bar1Total),
        ):
            try:
                v = call()
                f[key] = v.decode() if isinstance(v, bytes) else v
            except Exception as exc:  # noqa: BLE001
                f[key] = f"n/a ({exc!r})"
        return f
    finally:
        pynvml.nvmlShutdown()


fact("nvml_static", static_facts())
try:
    from importlib.metadata import version as _version
    fact("nvidia_ml_py", _version("nvidia-ml-py"))
except Exception:  # noqa: BLE001
    fact("nvidia_ml_py", "unknown")
raw0 = raw_nvml()
fact("raw_baseline", raw0)
if isinstance(raw0.get("memory_v2"), dict):
    v1, v2 = raw0["memory_v1"], raw0["memory_v2"]
    check("NVML v1 used = v2 used + v2 reserved (MiB)",
          (v2["used"] + v2["reserved"]) // MIB, v1["used"] // MIB,
          abs(v1["used"] - v2["used"] - v2["reserved"]) <= MIB)
    check("gpumgr reserved MiB = NVML v2 reserved", v2["reserved"] // MIB,
          base["memory_reserved_mib"], base["memory_reserved_mib"] == v2["reserved"] // MIB)
    check("gpumgr used/free MiB from v2 (used rounded up, free down)",
          f"{-(-v2['used'] // MIB)}/{v2['free'] // MIB}",
          f"{base['memory_used_mib']}/{base['memory_free_mib']}",
          (base["memory_used_mib"], base["memory_free_mib"])
          == (-(-v2["used"] // MIB), v2["free"] // MIB))
which = next((a for a in ("nvmlDeviceGetComputeRunningProcesses_v3",
                          "nvmlDeviceGetComputeRunningProcesses_v2")
              if isinstance(raw0.get(a), list)), None)
fact("process_list_api", which)

if shutil.which("nvidia-smi"):
    smi = subprocess.run(
        ["nvidia-smi", f"--id={INDEX}", "--query-gpu=name,driver_version,memory.total,"
         "memory.reserved,memory.used,memory.free,compute_cap", "--format=csv"],
        capture_output=True, text=True,
    )
    fact("nvidia_smi", (smi.stdout + smi.stderr).strip())

# -- NvmlBackend read latency (the daemon's poll path: init, read, shutdown) ---------------
backend = NvmlBackend()
lat = []
for _ in range(20):
    t = time.perf_counter()
    backend.read()
    lat.append(time.perf_counter() - t)
lat.sort()
fact("nvml_read_ms", {"min": round(lat[0] * 1e3, 2), "median": round(lat[10] * 1e3, 2),
                      "max": round(lat[-1] * 1e3, 2)})


def lib_card():
    inv = backend.read()
    for g in inv.gpus:
        if g.index == INDEX:
            return inv, g
    return inv, None


# -- 2. a known allocation in a child --------------------------------------------------------
CHILD = r"""
import json, os, sys, time
import torch
dev = torch.device("cuda", int(os.environ["GPU_CHECK_TORCH_DEVICE"]))
nbytes = int(float(sys.argv[1]) * (1 << 30))
def report(tag, **extra):
    free, total = torch.cuda.mem_get_info(dev)
    print(json.dumps({"tag": tag, "pid": os.getpid(), "pgid": os.getpgid(0),
                      "cuda_free": free, "cuda_total": total,
                      "torch_allocated": torch.cuda.memory_allocated(dev),
                      "torch_reserved": torch.cuda.memory_reserved(dev), **extra}), flush=True)
torch.zeros(1, device=dev); torch.cuda.synchronize(dev)
report("context", torch=torch.__version__, cuda=torch.version.cuda,
       lazy=os.environ.get("CUDA_MODULE_LOADING", "(default)"))
buf = None
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "cublas":
        a = torch.randn(256, 256, device=dev, dtype=torch.float16); (a @ a).sum().item()
        torch.cuda.synchronize(dev); report("cublas")
    elif cmd == "alloc":
        buf = torch.empty(nbytes, dtype=torch.uint8, device=dev); buf.zero_()
        torch.cuda.synchronize(dev); report("alloc")
    elif cmd == "free":
        buf = None; torch.cuda.empty_cache(); torch.cuda.synchronize(dev); report("free")
"""

# Asked in a child: this process must never hold a CUDA context of its own.
_t = subprocess.run([PY, "-c", "import torch; print(torch.cuda.is_available())"],
                    capture_output=True, text=True, stdin=subprocess.DEVNULL)
have_torch = _t.returncode == 0 and _t.stdout.strip() == "True"
torch_why = ("torch.cuda.is_available() is False" if _t.returncode == 0
             else f"torch not importable ({(_t.stderr.strip().splitlines() or ['?'])[-1]})")


def start_child():
    env = dict(os.environ)
    # NVML indices ignore CUDA_VISIBLE_DEVICES (DESIGN.md §3): pin the child by UUID.
    env["CUDA_VISIBLE_DEVICES"] = base["uuid"]
    env["GPU_CHECK_TORCH_DEVICE"] = "0"
    child = subprocess.Popen(
        [PY, "-c", CHILD, str(ALLOC_GIB)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=env, start_new_session=True,
    )
    return child


def ask(child, cmd=None):
    if cmd:
        child.stdin.write(cmd + "\n")
        child.stdin.flush()
    line = child.stdout.readline()
    if not line:
        die(f"the torch child exited (rc {child.wait()}) before answering {cmd or 'context'}")
    return json.loads(line)


def wait_release(pid, used_before, sent):
    """Poll NvmlBackend (the daemon's path) until the pid is gone from the process list and
    the card's used memory is back within BACK_TOL_MIB of used_before; seconds since `sent`."""
    t_gone = t_back = None
    reads = 0
    while time.monotonic() - sent < RELEASE_TIMEOUT_S and (t_gone is None or t_back is None):
        _, g = lib_card()
        reads += 1
        now = time.monotonic() - sent
        if g is None:
            continue
        if t_gone is None and all(p.pid != pid for p in g.processes):
            t_gone = now
        if t_back is None and g.memory_used_bytes <= used_before + BACK_TOL_MIB * MIB:
            t_back = now
    return t_gone, t_back, reads


alloc_mib = int(ALLOC_GIB * 1024)
if not have_torch:
    fact("allocation_check", f"skipped: {torch_why}")
else:
    _, g0 = lib_card()
    if g0 is None:
        die("NVML stopped answering between reads")
    used0 = g0.memory_used_bytes
    child = start_child()
    c_ctx = ask(child)
    pid = c_ctx["pid"]
    fact("child", {"pid": pid, "torch": c_ctx["torch"], "cuda_runtime": c_ctx["cuda"],
                   "CUDA_MODULE_LOADING": c_ctx["lazy"]})
    _, d_ctx, _ = cli("gpus", "--json", name="gpus-context.json")
    g_ctx = card(d_ctx)
    p_ctx = proc(g_ctx, pid)
    fact("raw_context", raw_nvml())
    ctx_dev = g_ctx["memory_used_mib"] - base["memory_used_mib"]
    check("child listed by `gpus --json` (pid, kind compute)", f"pid {pid}, compute",
          "absent" if p_ctx is None else f"pid {p_ctx['pid']}, {p_ctx['kind']}",
          p_ctx is not None and p_ctx["kind"] == "compute")
    ctx_pid = None if p_ctx is None else p_ctx["used_mib"]
    check("CUDA context, per-process used_mib (torch bare context)", "<= 512 (planner default)",
          ctx_pid, ctx_pid is not None and ctx_pid <= 512)
    check("CUDA context, card used delta (MiB)", f"~ per-process {ctx_pid}", ctx_dev,
          ctx_pid is not None and abs(ctx_dev - ctx_pid) <= TOL_MIB)
    check("cudaMemGetInfo free vs NVML free (MiB, at context)",
          g_ctx["memory_free_mib"], c_ctx["cuda_free"] // MIB,
          abs(c_ctx["cuda_free"] // MIB - g_ctx["memory_free_mib"]) <= TOL_MIB)
    # vLLM's --gpu-memory-utilization base is cudaMemGetInfo's total, which excludes the
    # driver's reserved memory (seen on an H200, driver 580: docs/gpu-check.md)
    cuda_total_want = g_ctx["memory_total_mib"] - (g_ctx["memory_reserved_mib"] or 0)
    check("cudaMemGetInfo total = NVML total - reserved (MiB; vLLM's 'total')",
          cuda_total_want, c_ctx["cuda_total"] // MIB,
          abs(c_ctx["cuda_total"] // MIB - cuda_total_want) <= 1)

    c_cub = ask(child, "cublas")
    _, d_cub, _ = cli("gpus", "--json", name="gpus-cublas.json")
    p_cub = proc(card(d_cub), pid)
    cub_pid = None if p_cub is None else p_cub["used_mib"]
    check("CUDA context + cuBLAS handle, per-process used_mib", "<= 512 (planner default)",
          cub_pid, cub_pid is not None and cub_pid <= 512)

    c_alloc = ask(child, "alloc")
    _, d_alloc, _ = cli("gpus", "--json", name="gpus-alloc.json")
    g_alloc = card(d_alloc)
    p_alloc = proc(g_alloc, pid)
    fact("raw_alloc", raw_nvml())
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", f"--id={INDEX}", "--query-compute-apps=pid,used_memory",
             "--format=csv,noheader"], capture_output=True, text=True,
        )
        fact("nvidia_smi_apps_alloc", (smi.stdout + smi.stderr).strip())
    a_pid = None if p_alloc is None else p_alloc["used_mib"]
    want = (cub_pid or 0) + alloc_mib
    check(f"after {ALLOC_GIB:g} GiB: per-process used_mib", f"{want} (+-{TOL_MIB})", a_pid,
          a_pid is not None and abs(a_pid - want) <= TOL_MIB)
    dev_delta = g_alloc["memory_used_mib"] - card(d_cub)["memory_used_mib"]
    check(f"after {ALLOC_GIB:g} GiB: card used delta (MiB)", f"{alloc_mib} (+-{TOL_MIB})",
          dev_delta, abs(dev_delta - alloc_mib) <= TOL_MIB)
    free_delta = card(d_cub)["memory_free_mib"] - g_alloc["memory_free_mib"]
    check(f"after {ALLOC_GIB:g} GiB: card free delta (MiB)", f"{alloc_mib} (+-{TOL_MIB})",
          free_delta, abs(free_delta - alloc_mib) <= TOL_MIB)
    check("torch reserved vs NVML per-process (MiB): the context's share",
          "context ~ per-process - torch reserved",
          f"{a_pid} - {c_alloc['torch_reserved'] // MIB} = "
          f"{(a_pid or 0) - c_alloc['torch_reserved'] // MIB}", True)

    # attribution on real data: by pid, and by process group alone (EngineCore's case)
    inv, _ = lib_card()
    by_pid = card(attribute(inv, managed_pids={pid: "gpu-check"}).to_dict())
    by_pgid = card(attribute(inv, managed_pids={}, managed_pgids={c_alloc["pgid"]: "gpu-check"})
                   .to_dict())
    gp = [p for g in inv.gpus if g.index == INDEX for p in g.processes if p.pid == pid]
    check("attribution: pgid read for the NVML pid", c_alloc["pgid"],
          gp[0].pgid if gp else "absent", bool(gp) and gp[0].pgid == c_alloc["pgid"])
    check("attribution: owner by pid / by process group", "gpu-check / gpu-check",
          f"{(proc(by_pid, pid) or {}).get('owner')} / {(proc(by_pgid, pid) or {}).get('owner')}",
          (proc(by_pid, pid) or {}).get("owner") == "gpu-check"
          and (proc(by_pgid, pid) or {}).get("owner") == "gpu-check")
    check("`gpus --json` owner with no daemon", "unknown",
          None if p_alloc is None else p_alloc["owner"],
          p_alloc is not None and p_alloc["owner"] == "unknown")

    # in-process free (empty_cache): how long until NVML sees it
    used_cub = card(d_cub)["memory_used_mib"] * MIB
    t0 = time.monotonic()
    c_free = ask(child, "free")
    t_ret = time.monotonic() - t0
    t_back = None
    while time.monotonic() - t0 < RELEASE_TIMEOUT_S:
        _, g = lib_card()
        if g is not None and g.memory_used_bytes <= used_cub + BACK_TOL_MIB * MIB:
            t_back = time.monotonic() - t0
            break
    check("in-process free (empty_cache): NVML shows it back (s)",
          f"< {RELEASE_TIMEOUT_S:g}", None if t_back is None else round(t_back, 3),
          t_back is not None)
    fact("in_process_free", {"empty_cache_returned_s": round(t_ret, 3),
                             "nvml_back_s": None if t_back is None else round(t_back, 3)})

    # stop while holding memory: SIGTERM to the group, like the supervisor's stop path
    ask(child, "alloc")
    _, g_hold = lib_card()
    sent = time.monotonic()
    os.killpg(pid, signal.SIGTERM)
    child.wait(timeout=RELEASE_TIMEOUT_S)
    t_exit = time.monotonic() - sent
    t_gone, t_back, reads = wait_release(pid, used0, sent)
    fact("stop_release", {"exit_s": round(t_exit, 3),
                          "pid_gone_from_nvml_s": None if t_gone is None else round(t_gone, 3),
                          "memory_back_s": None if t_back is None else round(t_back, 3),
                          "nvml_reads": reads, "held_mib": g_hold.memory_used_mib - used0 // MIB})
    check("SIGTERM with memory held: pid gone from NVML list (s after signal)",
          f"< {RELEASE_TIMEOUT_S:g}", None if t_gone is None else round(t_gone, 3),
          t_gone is not None)
    check("SIGTERM with memory held: card used back to baseline (s after signal)",
          f"< {RELEASE_TIMEOUT_S:g}", None if t_back is None else round(t_back, 3),
          t_back is not None)
    check("memory back no later than the pid leaves the list (the daemon's criterion)",
          "memory_back_s <= pid_gone_s",
          f"{None if t_back is None else round(t_back, 3)} <= "
          f"{None if t_gone is None else round(t_gone, 3)}",
          t_back is not None and t_gone is not None and t_back <= t_gone + 0.001)
    _, d_after, _ = cli("gpus", "--json", name="gpus-after.json")
    g_after = card(d_after)
    check("after stop: card used MiB back to baseline", base["memory_used_mib"],
          g_after["memory_used_mib"],
          abs(g_after["memory_used_mib"] - base["memory_used_mib"]) <= BACK_TOL_MIB)

# -- 3. gpumgr plan --json against the real card ---------------------------------------------
if PLAN_MODE == "off":
    fact("plan", "skipped (GPU_CHECK_PLAN=off)")
else:
    args, env = ["plan", "--json"], {}
    tmp = None
    if PLAN_MODE == "sim-weights":
        # header-only weights (real sizes and config.json) from gpumgr's simulated hub, moved
        # where a real `gpumgr pull` leaves them; the inventory is still real NVML.
        tmp = tempfile.mkdtemp(prefix="gpu-check-cache-")
        cfgdir = os.environ.get("GPU_CHECK_EXAMPLE_CONFIG", os.path.join(ROOT, "config"))
        prc, _, perr = cli("--config-dir", cfgdir, "pull", "--simulate", "--json",
                           "qwen-7b", "qwen-14b", env={"GPUMGR_CACHE_DIR": tmp})
        if prc != 0:
            fact("plan", f"skipped: simulated pull failed: {perr.splitlines()[-1:]}")
            args = None
        else:
            os.rename(os.path.join(tmp, "simulated-hub"), os.path.join(tmp, "hub"))
            env = {"GPUMGR_CACHE_DIR": tmp}
            args = ["--config-dir", cfgdir, "plan", "--json", "qwen-7b", "qwen-14b"]
    if args:
        prc, pdoc, perr = cli(*args, env=env, name="plan.json")
        if pdoc is None:
            fact("plan", f"no plan (exit {prc}): {perr.splitlines()[-1] if perr else ''}")
        else:
            short = [
                {"gpu": g["gpu_index"], "free_mib": g["memory_free_mib"],
                 "instances": [(i["provider"], i["gpu_memory_utilization"], i["budget_mib"],
                                i["kv_cache_mib"], i["max_concurrency"],
                                " ".join(i["argv"][3:]))
                               for i in g["instances"]]}
                for g in pdoc["gpus"]
            ]
            fact("plan", {"exit": prc, "feasible": pdoc["feasible"], "gpus": short})
            check(f"`gpumgr plan --json` ({PLAN_MODE}) on the real card", "exit 0, feasible",
                  f"exit {prc}, feasible={pdoc['feasible']}", prc == 0 and pdoc["feasible"])
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)

# -- 4. the table ----------------------------------------------------------------------------
save("summary.json", summary)
print(json.dumps(summary["facts"], indent=1, default=str))
w = [max(len(r[i]) for r in rows + [("check", "expected", "observed", True)]) for i in range(3)]
print(f"{'check':<{w[0]}}  {'expected':<{w[1]}}  {'observed':<{w[2]}}  ok")
for name, exp, obs, ok in rows:
    print(f"{name:<{w[0]}}  {exp:<{w[1]}}  {obs:<{w[2]}}  {'yes' if ok else 'NO'}")
failed = [r[0] for r in rows if not r[3]]
print(f"gpu-check: {len(rows) - len(failed)}/{len(rows)} checks passed"
      + (f"; failed: {'; '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
PY
