"""Benchmark of the lifecycle policies: a demand trace through a real LiteLLM proxy with gpumgr's
callback, gpumgr on the simulated 16 GiB card (the 7B and the 14B on one port, or with sleep mode
each on its own port; the simulated Ollama and a fake Ollama Cloud as the fallbacks).

Not a test. For each row the whole stack starts afresh (``tests/test_litellm_proxy.py``'s parts:
``.venv-litellm`` or ``$GPUMGR_LITELLM_BIN``) and the same open-loop trace is replayed, every
request on its own worker (``--rate`` requests a second):

1. ``7b``: only the 7B is asked for (``--phase-s``);
2. ``14b``: the demand shifts to the 14B (twice as long);
3. ``mixed`` (twice as long), two traces: ``interleaved``, the 14B stays the working model with a
   ``--burst-s`` burst of 7B requests every ``--burst-every-s`` (a quick question to the small
   model while working with the large one); ``alternating``, ``--alternate-s`` bursts of 7B,
   14B, 7B … 50/50, the contrast: no policy that swaps a fifth as often as every-miss can
   serve both halves locally;
4. ``idle``: one 7B request every 5 s.

Time is compressed, by about 40: the simulated load of ``--load-s`` 1.5 s stands for the 14B's
~60 s vLLM cold load, a phase of 20–40 s for 15–25 minutes of work. The policy's times are
scaled with it: ``window_s`` 4 s (≈ 160 s), ``min_residency_s`` 15 s (≈ 10 min), the 14B's
``idle: {after_s: 5, swap_to: qwen-7b}`` (≈ 3 min); ``margin`` 0.2, ``min_requests`` 3 as
shipped; ``hold_s`` 2 s is not scaled (it bounds a wait a person sees).

The policies compared:

- ``manual``: nothing automatic (what the owner has today): the 14B's requests go down its
  chain (Ollama, then the cloud) for the whole run;
- ``every-miss``: what a load-on-request proxy does: a request for the model that is not
  resident holds until ``gpumgr swap`` (the control socket) has put it in, then is sent;
  requests for the old model meanwhile go to the router as they come;
- ``demand``: ``policy: demand`` on both and the 14B's idle swap back to the 7B (what an
  operator configures), the callback reporting its misses; requests go to the fallbacks at once
  meanwhile;
- ``demand+hold``: the same with the callback's ``GPUMGR_HOLD_S`` (``--hold-s``).

Each with sleep mode off (one shared port: a swap stops one engine and cold-starts the other)
and on (``swap_mode: sleep``, each model on its own port, the router sending each to its own:
a swap puts the old one to sleep and wakes the new one). A sleep-mode row starts where such a
box stays once it has swapped: both engines loaded, the 14B asleep, each wake measured (four
operator swaps before the trace, not counted). Without sleep mode ``hold_s`` never waits: a
fresh daemon has no measured load for the 14B, and on the real box a load (~60 s) is longer
than ``hold_s`` anyway; with sleep mode it waits for a wake (announced with the last measured
wake, ``eta_s``).

Per row: requests, the share answered by the local model they asked for (overall and over the
shifted phases 14b + mixed), swaps (swap operations the daemon ran, whoever asked), p50/p95
latency, requests answered by the cloud, and the p95 of the requests that waited (held by
every-miss, or answered in over 0.25 s: a hold, a wake or a load) and were answered locally.
Prints a table and the issue's goals, and writes ``bench/results/policy.json``.

    .venv/bin/python bench/policy.py [--traces interleaved,alternating] [--sleep off,on]
        [--policies manual,every-miss,demand,demand+hold] [--rate 4] [--phase-s 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the e2e stack lives with the tests

from _report import header, results_path, write_result  # noqa: E402

import test_litellm_proxy as e2e  # noqa: E402  (skips itself when there is no LiteLLM proxy)
from gpumgr.sim.harness import DaemonHarness, free_port, wait_for  # noqa: E402
from gpumgr.config import load_config  # noqa: E402
from gpumgr.integrations.litellm_config import litellm_config, render_yaml  # noqa: E402

RESULTS = results_path("policy")
SMALL, LARGE = e2e.VLLM_NAME, "qwen-coder-14b-vllm"
NAMES = {SMALL: e2e.ENGINE, LARGE: "qwen-14b"}
POLICIES = ("manual", "every-miss", "demand", "demand+hold")
TRACES = ("interleaved", "alternating")
ROWS: tuple[tuple[str, str, str], ...] = (
    *(("interleaved", "off", p) for p in POLICIES),
    *(("interleaved", "on", p) for p in POLICIES if p != "manual"),
    *(("alternating", "off", p) for p in ("manual", "every-miss", "demand")),
)
"""(trace, sleep mode, policy) of every row measured by default. ``manual`` with sleep mode is
the same run as without (it never swaps), and the alternating trace is the contrast row."""

MAPPINGS = f"""
exact_matches:
  {SMALL}: {{provider: {e2e.ENGINE}, priority: primary}}
  {LARGE}: {{provider: qwen-14b, priority: primary}}
  {e2e.PULLED}: {{provider: ollama, priority: secondary}}
  {e2e.CLOUD_NAME}: {{provider: ollama-cloud, priority: primary}}
fallback_chains:
  {SMALL}: {{chain: [{e2e.PULLED}, {e2e.CLOUD_NAME}]}}
  {LARGE}: {{chain: [{e2e.PULLED}, {e2e.CLOUD_NAME}]}}
  {e2e.CLOUD_NAME}: {{chain: [{e2e.PULLED}]}}
"""


def demand_yaml(residency_s: float, window_s: float) -> str:
    return f"""
policies:
  check_interval_s: 0.5
  demand:
    min_residency_s: {residency_s:g}
    window_s: {window_s:g}
    margin: 0.2
    min_requests: 3
    max_swaps_per_hour: 30
"""


def providers_yaml(ports: dict[str, int], ollama_url: str, cloud_url: str, *, sleep: bool,
                   demand: bool, idle_after_s: float) -> str:
    """The e2e stack's registry with the 7B and the 14B on ``ports`` (one shared port, or each
    its own with ``swap_mode: sleep``); under ``demand`` both are ``policy: demand`` and the 14B
    goes back to the 7B after ``idle_after_s`` without requests (what an operator sets)."""
    def engine(name: str, served: str, repo: str, status: str) -> str:
        text = e2e.vllm_provider_yaml(name, ports[served], served=served, repo=repo)
        extra = ""
        if sleep:
            extra += "    swap_mode: sleep\n"
        if demand:
            extra += "    policy: demand\n"
            if name == "qwen-14b" and idle_after_s > 0:
                extra += f"    idle: {{after_s: {idle_after_s:g}, swap_to: {e2e.ENGINE}}}\n"
        return text.replace("status: active", f"status: {status}").replace(
            "    max_num_seqs: 4\n", "    max_num_seqs: 4\n" + extra)

    return e2e.OTHER_BACKENDS_HEALTH_YAML + "providers:" + engine(
        e2e.ENGINE, SMALL, "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "active") + engine(
        "qwen-14b", LARGE, "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ", "standby") + f"""
  ollama:
    type: ollama
    base_url: {ollama_url}
    status: active
    models: [{e2e.PULLED}, {e2e.NOT_PULLED}]
  ollama-cloud:
    type: ollama_cloud
    base_url: {cloud_url}
    status: active
    requires_api_key: true
    env_var: {e2e.KEY_ENV}
    models: [{e2e.CLOUD_NAME}]
"""


WAITED_S = 0.25
"""A request answered in more than this waited (for a hold, a wake or a load): 2.5 times the
typical local answer here (p50 about 0.1 s through the proxy on the shared 2-core machine)."""


@dataclass
class Answer:
    model: str
    phase: str
    sent_at: float
    took_s: float
    status: int
    api_base: str
    waited: bool = False


def trace(kind: str, rate: float, phase_s: float, *, burst_s: float, burst_every_s: float,
          alternate_s: float) -> list[tuple[float, str, str]]:
    """(offset s, model, phase) of every request. The ``mixed`` phase of ``interleaved``: the
    14B stays the working model, with a ``burst_s`` burst of 7B requests in the middle of every
    ``burst_every_s``; of ``alternating``: ``alternate_s`` bursts of 7B, 14B, 7B … (50/50)."""
    out: list[tuple[float, str, str]] = []
    t, gap = 0.0, 1.0 / rate

    def run(model_at: Any, length: float, phase: str, every: float = gap) -> None:
        nonlocal t
        end = t + length
        while t < end - 1e-9:
            out.append((t, model_at(t - (end - length)), phase))
            t += every

    def interleaved(x: float) -> str:
        at = x % burst_every_s - (burst_every_s - burst_s) / 2
        return SMALL if 0 <= at < burst_s else LARGE

    def alternating(x: float) -> str:
        return SMALL if int(x // alternate_s) % 2 == 0 else LARGE

    run(lambda _: SMALL, phase_s, "7b")
    run(lambda _: LARGE, 2 * phase_s, "14b")
    run(interleaved if kind == "interleaved" else alternating, 2 * phase_s, "mixed")
    run(lambda _: SMALL, phase_s, "idle", every=5.0)
    return out


@dataclass(frozen=True)
class Row:
    trace: str
    sleep: bool
    policy: str

    @property
    def key(self) -> str:
        return f"{self.trace}/sleep {'on' if self.sleep else 'off'}/{self.policy}"


@contextlib.contextmanager
def stack(tmp: Path, row: Row, args: argparse.Namespace
          ) -> Iterator[tuple[e2e.Stack, DaemonHarness, dict[str, int]]]:
    """test_litellm_proxy's stack with this row's registry, settings and proxy environment; the
    engine port of each model (one shared port, or each its own with sleep mode)."""
    cloud = e2e.FakeCloud().start()
    ollama = harness = None
    try:
        ollama = e2e.reference_card_with_ollama(tmp)
        port = free_port()
        ports = {SMALL: port, LARGE: free_port() if row.sleep else port}
        demand = row.policy.startswith("demand")
        providers = providers_yaml(ports, ollama.base_url, cloud.base_url, sleep=row.sleep,
                                   demand=demand, idle_after_s=args.idle_after_s)
        settings = e2e.HEALTH_YAML + e2e.LIFECYCLE_YAML.replace(
            "load_seconds: 0.2", f"load_seconds: {args.load_s:g}") + demand_yaml(
            args.residency_s, args.window_s)
        harness = DaemonHarness(tmp, providers, settings, env={e2e.KEY_ENV: "sk-bench"})
        (harness.config_dir / "model-mappings.yaml").write_text(MAPPINGS)
        harness.start()
        harness.wait_up(e2e.ENGINE, 60)
        wait_for(lambda: (d := harness.status()).get("adoption_done")
                 and d.get("first_probe_round_done"), 20, "informed")
        cfg = load_config(harness.config_dir, env={})
        proxy_dir = tmp / "proxy"
        proxy_dir.mkdir()
        config = litellm_config(cfg.providers_file, cfg.mappings, request_timeout_s=60)
        config["litellm_settings"]["callbacks"].append("gpumgr_e2e_counter.counter")
        (proxy_dir / "config.yaml").write_bytes(render_yaml(config))
        (proxy_dir / "gpumgr_e2e_counter.py").write_text(e2e.COUNTER)
        proxy_port = free_port()
        log = tmp / "litellm.log"
        env = e2e.proxy_env(harness, tmp / "attempts.jsonl", **{
            e2e.KEY_ENV: "sk-bench",
            "GPUMGR_HOLD_S": str(args.hold_s if row.policy == "demand+hold" else 0)})
        with e2e.running_proxy(proxy_dir, proxy_port, env, log, ready_s=120) as proxy:
            url = f"http://127.0.0.1:{proxy_port}"
            s = e2e.Stack(harness, ollama, cloud, proxy, url, tmp / "attempts.jsonl", port, log)
            wait_for(lambda: s.ask(SMALL).status == 200, 60, "a first answer through the proxy")
            if row.sleep:  # the steady state of a sleep-mode pair: both loaded, the 14B asleep
                swap = EveryMiss(harness)
                for old, new in ((SMALL, LARGE), (LARGE, SMALL), (SMALL, LARGE), (LARGE, SMALL)):
                    if not swap.swap(old, new):
                        raise RuntimeError(f"the warm-up swap {old} → {new} failed")
                harness.wait_up(e2e.ENGINE, 30)
                harness.wait_backend(NAMES[LARGE], lambda b: b["state"] == "sleeping", 30)
                wait_for(lambda: s.ask(SMALL).status == 200, 60, "an answer after the warm-up")
            yield s, harness, ports
            s.client.close()
    finally:
        if harness is not None:
            harness.cleanup(check_log=False)
        if ollama is not None:
            ollama.stop()
        cloud.stop()


class EveryMiss:
    """A load-on-request proxy in front of the router: a request for the model that is not
    resident waits for ``gpumgr swap`` (one at a time), then goes."""

    def __init__(self, harness: DaemonHarness) -> None:
        self.resident = SMALL
        self.lock = threading.Lock()
        self.client = httpx2.Client(transport=httpx2.HTTPTransport(
            uds=str(harness.runtime_dir / "gpumgr.sock")), base_url="http://gpumgr", timeout=120)

    def swap(self, old: str, new: str) -> bool:
        """``gpumgr swap`` through the control socket; whether it succeeded."""
        body = {"old": NAMES[old], "new": NAMES[new]}
        with self.client.stream("POST", "/v1/control/swap", json=body) as r:
            last = [line for line in r.iter_lines() if line.strip()][-1:]
        return bool(last) and json.loads(last[0]).get("ok") is True

    def before(self, model: str) -> bool:
        """Make ``model`` resident; True when the request had to wait for a swap."""
        if self.resident == model:
            return False
        with self.lock:
            if self.resident != model:
                self.swap(self.resident, model)
                self.resident = model
        return True


def replay(s: e2e.Stack, harness: DaemonHarness, policy: str,
           plan: list[tuple[float, str, str]]) -> list[Answer]:
    miss = EveryMiss(harness) if policy == "every-miss" else None
    answers: list[Answer] = []
    lock = threading.Lock()
    t0 = time.monotonic() + 0.5

    def one(offset: float, model: str, phase: str) -> None:
        delay = t0 + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        start = time.monotonic()
        waited = miss.before(model) if miss is not None else False
        r = s.ask(model)
        a = Answer(model, phase, start, time.monotonic() - start, r.status, r.api_base,
                   waited or r.took_s > WAITED_S)
        with lock:
            answers.append(a)

    with ThreadPoolExecutor(max_workers=64) as pool:
        for item in plan:
            pool.submit(one, *item)
    return answers


def local_of(ports: dict[str, int], a: Answer) -> bool:
    """Answered by the local model it asked for: its engine's port (on a shared port the router
    sends a 14B request there only while the 14B is resident, and the 7B would refuse its name)."""
    return a.status == 200 and f":{ports[a.model]}" in (a.api_base or "")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def summarise(s: e2e.Stack, harness: DaemonHarness, ports: dict[str, int],
              answers: list[Answer], cloud_before: int, log_offset: int) -> dict[str, Any]:
    events = harness.events(log_offset)  # the trace's own (not the sleep-mode warm-up's)
    took = [a.took_s for a in answers]
    swaps = [e.get("what", "") for e in events if e.get("event") == "operation.begin"
             and str(e.get("what", "")).startswith("swap ")]
    shifted = [a for a in answers if a.phase in ("14b", "mixed")]
    waited = [a.took_s for a in answers if a.waited and local_of(ports, a)]
    phases = {p: [a for a in answers if a.phase == p] for p in ("7b", "14b", "mixed", "idle")}
    decisions = [{"made": e.get("made"), "reason": e.get("reason")} for e in events
                 if e.get("event") == "policy.decision"]
    idle = [{"backend": e.get("backend"), "idle_s": e.get("idle_s")} for e in events
            if e.get("event") == "policy.idle"]
    t0 = min((a.sent_at for a in answers), default=0.0)
    elsewhere = [[round(a.sent_at - t0, 2), "7b" if a.model == SMALL else "14b", a.phase,
                  a.api_base.rsplit(":", 1)[-1] if a.status == 200 else f"HTTP {a.status}"]
                 for a in sorted(answers, key=lambda a: a.sent_at) if not local_of(ports, a)]
    return {
        "not_local": elsewhere,
        "local_share_by_phase": {p: round(sum(local_of(ports, a) for a in xs) / len(xs), 3)
                                 for p, xs in phases.items() if xs},
        "policy_decisions": decisions,
        "idle_actions": idle,
        "swap_operations": swaps,
        "requests": len(answers),
        "failed": sum(1 for a in answers if a.status != 200),
        "local_share": round(sum(local_of(ports, a) for a in answers) / len(answers), 3),
        "local_share_shifted": round(sum(local_of(ports, a) for a in shifted) / len(shifted), 3),
        "swaps": len(swaps),
        "p50_s": round(quantile(took, 0.5), 3),
        "p95_s": round(quantile(took, 0.95), 3),
        "to_cloud": s.cloud.chats - cloud_before,
        "waited": len(waited),
        "waited_p95_s": round(quantile(waited, 0.95), 3),
    }


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals against the rows measured: per trace and sleep mode, each demand row
    against every-miss (local share within 5 points, at most a fifth of its swaps) and manual
    (+30 points on the shifted phases; manual is the same run with or without sleep mode), and
    with sleep mode and ``hold_s`` the p95 of the requests that waited (≤ 2.5 s)."""
    rows = {(r["trace"], r["sleep_mode"], r["policy"]): r for r in results.values()}
    out: list[dict[str, Any]] = []
    for (tr, sleep, policy), r in rows.items():
        if not policy.startswith("demand"):
            continue
        where = f"{tr}, sleep mode {'on' if sleep else 'off'}, {policy}"
        if (em := rows.get((tr, sleep, "every-miss"))) is not None:
            gap = 100 * (em["local_share"] - r["local_share"])
            out.append({"goal": f"{where}: local share within 5 points of every-miss",
                        "measured": f"{100 * r['local_share']:.1f} % vs "
                                    f"{100 * em['local_share']:.1f} % ({gap:.1f} points behind)",
                        "met": gap <= 5})
            out.append({"goal": f"{where}: at most a fifth of every-miss's swaps",
                        "measured": f"{r['swaps']} vs {em['swaps']}",
                        "met": 5 * r["swaps"] <= em["swaps"]})
        if (m := rows.get((tr, sleep, "manual")) or rows.get((tr, False, "manual"))) is not None:
            lead = 100 * (r["local_share_shifted"] - m["local_share_shifted"])
            out.append({"goal": f"{where}: at least 30 points above manual on the shifted phases",
                        "measured": f"{100 * r['local_share_shifted']:.1f} % vs "
                                    f"{100 * m['local_share_shifted']:.1f} % ({lead:+.1f} points)",
                        "met": lead >= 30})
        if sleep and policy == "demand+hold":
            out.append({"goal": f"{where}: p95 of the requests that waited ≤ 2.5 s",
                        "measured": f"{r['waited_p95_s']:.2f} s over {r['waited']} request(s)",
                        "met": r["waited"] > 0 and r["waited_p95_s"] <= 2.5})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--phase-s", type=float, default=20.0)
    ap.add_argument("--burst-s", type=float, default=1.0, help="interleaved: a 7B burst")
    ap.add_argument("--burst-every-s", type=float, default=10.0, help="interleaved: one per")
    ap.add_argument("--alternate-s", type=float, default=5.0, help="alternating: each burst")
    ap.add_argument("--load-s", type=float, default=1.5, help="simulated engine load time")
    ap.add_argument("--hold-s", type=float, default=2.0)
    ap.add_argument("--residency-s", type=float, default=15.0)
    ap.add_argument("--window-s", type=float, default=4.0)
    ap.add_argument("--idle-after-s", type=float, default=5.0,
                    help="demand rows: the 14B's idle swap back to the 7B (0: none)")
    ap.add_argument("--traces", default=",".join(TRACES))
    ap.add_argument("--sleep", default="off,on", help="sleep mode: off, on or both")
    ap.add_argument("--policies", default=",".join(POLICIES))
    args = ap.parse_args()
    wanted = (set(args.traces.split(",")), set(args.sleep.split(",")),
              set(args.policies.split(",")))
    rows = [Row(t, sl == "on", p) for t, sl, p in ROWS
            if t in wanted[0] and sl in wanted[1] and p in wanted[2]]
    results: dict[str, Any] = {}
    for row in rows:
        plan = trace(row.trace, args.rate, args.phase_s, burst_s=args.burst_s,
                     burst_every_s=args.burst_every_s, alternate_s=args.alternate_s)
        with tempfile.TemporaryDirectory(prefix="gpumgr-policy-") as d:
            with stack(Path(d), row, args) as (s, harness, ports):
                cloud_before, log_offset = s.cloud.chats, len(harness.log_text())
                answers = replay(s, harness, row.policy, plan)
                r = summarise(s, harness, ports, answers, cloud_before, log_offset)
        results[row.key] = {"trace": row.trace, "sleep_mode": row.sleep, "policy": row.policy,
                            **r}
        print(f"{row.key}: {r}", flush=True)
    out = {**header("policy"), "args": vars(args), "results": results,
           "goals": goals(results)}
    write_result(out, RESULTS)
    cols = ("requests", "local_share", "local_share_shifted", "swaps", "p50_s", "p95_s",
            "to_cloud", "waited", "waited_p95_s")
    print(f"{'row':<40} " + " ".join(f"{c:>19}" for c in cols))
    for key, r in results.items():
        print(f"{key:<40} " + " ".join(f"{r[c]!s:>19}" for c in cols))
    for g in out["goals"]:
        print(f"{'met' if g['met'] else 'MISSED'}: {g['goal']}: {g['measured']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
