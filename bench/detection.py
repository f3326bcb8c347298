"""Benchmark of failure detection: how soon the simulated daemon publishes a dead or hung engine.

Not a test. Runs ``gpumgr daemon --simulate`` (one managed vLLM engine on the simulated GPU) as
a subprocess, once per health profile, and repeats N times (default 10):

- SIGKILL the engine -> time until (a) an SSE event on ``/v1/events`` says ``available: false``,
  (b) ``status.json`` shows it, (c) ``GET /v1/status`` shows it. A dead process is seen by the
  supervisor's exit watch (pidfd), not by a probe, so this does not depend on the profile.
- SIGSTOP the engine's process group (a hang) -> time until ``/v1/status`` flags it
  ``suspect`` (one failed probe: the router's callback skips it from then on) and until it says
  ``down``; this is the probe arithmetic: up to interval x retry_attempts + timeout (+ jitter). The hang
  starts at a random phase of the probe interval.

Profiles: ``default`` writes no ``health:`` settings at all, so it measures what the daemon does
out of the box for the engines it runs (``health.engine_interval_s`` / ``engine_timeout_s``, 3
attempts, jitter; the effective timing is read back from the daemon's own ``timing_for`` and
recorded); the default unresponsive-restart (30 s) is left on, far beyond the hang's detection.
``fast`` is the tests' (0.2 s / 0.2 s / 2 attempts, jitter 0.05 s, unresponsive-restart off).
Prints a table (min / p50 / max) and writes ``bench/results/detection.json``.

    .venv/bin/python bench/detection.py [--repeats 10] [--profiles fast,default]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import header, results_path, write_result  # noqa: E402

from gpumgr.config import load_config  # noqa: E402
from gpumgr.health.scheduler import timing_for  # noqa: E402
from gpumgr.sim.harness import (  # noqa: E402
    FAST_LIFECYCLE_YAML,
    DaemonHarness,
    free_port,
    vllm_provider_yaml,
    wait_for,
)

RESULTS = results_path("detection")
ENGINE = "qwen-7b"
POLL_S = 0.005
"""How often this process re-reads ``/v1/status`` and ``status.json`` while it waits."""

PROFILES: dict[str, dict[str, float] | None] = {
    "default": None,  # no health settings: the daemon's own defaults
    "fast": {"interval_s": 0.2, "timeout_s": 0.2, "retry_attempts": 2, "jitter_s": 0.05},
}


def settings_yaml(profile: dict[str, float] | None) -> str:
    if profile is None:
        return FAST_LIFECYCLE_YAML  # engine start/restart speed only; nothing of health
    lines = ["health:"] + [f"  {k}: {v:g}" for k, v in profile.items()]
    lines += ["  starting_poll_s: 0.1", "  restart_unresponsive_after_s: null"]
    return "\n".join(lines) + "\n" + FAST_LIFECYCLE_YAML


def effective_timing(h: DaemonHarness) -> dict[str, float]:
    """The probe timing the daemon will use for the engine, from the daemon's own code."""
    cfg = load_config(h.config_dir, env=h.env, simulate=True)
    t = timing_for(cfg.provider(ENGINE), cfg.settings.health, cfg.providers_file.health_checks)
    return {"interval_s": t.interval_s, "timeout_s": t.timeout_s,
            "retry_attempts": t.retry_attempts, "jitter_s": t.jitter_s}


def _engine_unavailable(doc: dict[str, Any] | None) -> bool:
    return doc is not None and any(
        b["name"] == ENGINE and not b["available"] for b in doc["backends"]
    )


def ready_engine(h: DaemonHarness) -> int:
    """Wait until the engine is up and the supervisor saw it ready; its pid."""
    pid = int(h.wait_up(ENGINE, timeout_s=60)["pid"])
    h.wait_keeper_ready(pid)
    return pid


def measure_kill(h: DaemonHarness, sse: Any) -> dict[str, float]:
    pid = ready_engine(h)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    seen: dict[str, float] = {}
    deadline = killed_at + 30.0
    while len(seen) < 2 and time.monotonic() < deadline:
        if "status_file_s" not in seen and _engine_unavailable(h.status_file()):
            seen["status_file_s"] = time.monotonic() - killed_at
        if "api_s" not in seen and _engine_unavailable(h.status()):
            seen["api_s"] = time.monotonic() - killed_at
        time.sleep(POLL_S)
    event = sse.first(lambda f: f["name"] == ENGINE and f["available"] is False,
                      after=killed_at, timeout_s=30)  # fmt: skip
    if event is None or len(seen) < 2:
        raise RuntimeError(f"kill not detected within 30 s: {seen}")
    seen["sse_s"] = event[0] - killed_at
    return seen


def measure_hang(h: DaemonHarness, interval_s: float) -> dict[str, float]:
    """SIGSTOP the engine's group: seconds until ``/v1/status`` flags it ``suspect`` (what the
    router's callback skips) and until it is ``down``."""
    pid = ready_engine(h)
    # The scheduler probes one interval after the ``up`` transition; hanging at a random phase
    # (instead of right after ``up``, which always gives the worst case) samples the spread.
    time.sleep(random.uniform(0, interval_s))
    stopped_at = time.monotonic()
    os.killpg(pid, signal.SIGSTOP)
    seen: dict[str, float] = {}
    try:
        def down() -> bool:
            b = h.backend(ENGINE)
            now = time.monotonic() - stopped_at
            if "hang_suspect_s" not in seen and (b.get("suspect") or b["state"] != "up"):
                seen["hang_suspect_s"] = now
            if b["state"] == "down":
                seen["hang_down_s"] = now
                return True
            return False

        wait_for(down, 60, "down", poll_s=POLL_S)
        return seen
    finally:
        os.killpg(pid, signal.SIGCONT)


def run_profile(name: str, repeats: int) -> dict[str, Any]:
    profile = PROFILES[name]
    with tempfile.TemporaryDirectory(prefix=f"gpumgr-detection-{name}-") as tmp:
        h = DaemonHarness(Path(tmp), "providers:" + vllm_provider_yaml(ENGINE, free_port()),
                          settings_yaml(profile))  # fmt: skip
        timing = effective_timing(h)
        samples: dict[str, list[float]] = {"sse_s": [], "status_file_s": [], "api_s": [],
                                           "hang_suspect_s": [], "hang_down_s": []}  # fmt: skip
        try:
            h.start()
            sse = h.sse()
            for i in range(repeats):
                for key, value in measure_kill(h, sse).items():
                    samples[key].append(value)
                for key, value in measure_hang(h, timing["interval_s"]).items():
                    samples[key].append(value)
                print(f"  {name} #{i + 1}: kill->sse {samples['sse_s'][-1] * 1000:.0f} ms, "
                      f"hang->down {samples['hang_down_s'][-1]:.2f} s", flush=True)  # fmt: skip
            rc = h.stop()
            if rc != 0:
                raise RuntimeError(f"daemon exited {rc}")
        finally:
            h.cleanup()
    bound_s = timing["interval_s"] * timing["retry_attempts"] + timing["timeout_s"]
    return {
        "health_settings": profile if profile is not None else "none (defaults)",
        "health": timing,
        "hang_bound_s": bound_s,
        "samples_s": {k: [round(v, 4) for v in vs] for k, vs in samples.items()},
        "summary_s": {k: summary(vs) for k, vs in samples.items()},
    }


def summary(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    mid = len(s) // 2
    p50 = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
    return {"min": round(s[0], 4), "p50": round(p50, 4), "max": round(s[-1], 4)}


LABELS = {
    "sse_s": "SIGKILL -> SSE available:false",
    "status_file_s": "SIGKILL -> status.json",
    "api_s": "SIGKILL -> /v1/status",
    "hang_suspect_s": "SIGSTOP -> suspect",
    "hang_down_s": "SIGSTOP -> down",
}


def print_table(result: dict[str, Any]) -> None:
    print(f"\nfailure detection, {result['repeats']} repeats ({result['machine']['cpus']} CPUs)")
    print(f"{'profile':<8}  {'measure':<31}  {'min ms':>8}  {'p50 ms':>8}  {'max ms':>8}")
    for name, prof in result["profiles"].items():
        for key, label in LABELS.items():
            s = prof["summary_s"][key]
            print(f"{name:<8}  {label:<31}  {s['min'] * 1000:8.1f}  {s['p50'] * 1000:8.1f}  "
                  f"{s['max'] * 1000:8.1f}")  # fmt: skip
        h = prof["health"]
        print(f"{'':<8}  (interval {h['interval_s']:g} s, timeout {h['timeout_s']:g} s, "
              f"{h['retry_attempts']:g} attempts, jitter {h['jitter_s']:g} s: hang bound "
              f"{prof['hang_bound_s']:g} s + jitter)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--profiles", default="fast,default",
                        help="comma-separated, of: " + ", ".join(PROFILES))  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        parser.error(f"unknown profile(s): {', '.join(unknown)}")
    result: dict[str, Any] = {
        **header("detection"),
        "repeats": args.repeats,
        "poll_s": POLL_S,
        "profiles": {name: run_profile(name, args.repeats) for name in names},
    }
    print_table(result)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
