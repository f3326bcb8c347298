"""The chaos soak (issue 18): a seeded random sequence of operations against a real simulated
daemon under open-loop client traffic, with the invariants checked after every step.

One place for the soak's logic; ``tests/reliability/test_chaos_soak.py`` runs it at CI size and
``bench/soak.py`` runs it longer and prints its figures.

The box is the example registry's shape (``config/providers.yaml``): ``qwen-7b`` and ``qwen-14b``
share one port, ``deepseek-6.7b`` has its own, all three with ``swap_mode: sleep``; a simulated
Ollama (a process, killed and started again on the same port), Ollama Cloud played by a local
fake that needs a key, and a simulated Hugging Face hub run as its own process (killed and
started again on the same port). The daemon has a control token and the cloud key in its
environment: neither may appear, whole or as any 8-character piece, in anything it publishes.

The operation list is drawn from the seed alone (``plan_operations``): an operation that does
not apply to what runs at that moment (stopping a stopped engine, say) is still sent and its
refusal recorded, so that a seed replays the same requests. Outcomes (ok, refused with 400/409,
invalid) are recorded, never failures. After every step the soak waits (bounded) until the daemon
has converged, then checks:

1. one engine per port: at most one live engine process per port (engines' own event file and
   the process table);
2. what runs is what ``desired.json`` says: every desired backend ``up`` with a pid (or
   ``sleeping`` when desired asleep), every other one not up, and no ``intent`` left;
3. no process gpumgr started is untracked: every live engine is in ``children.json`` and is the
   pid the status shows for its backend;
4. GPU memory counted once: the simulated card's allocations sum to its used memory less the
   display, each held by a live engine (or Ollama), and the status's processes list each pid
   once;
5. the daemon's log shows no illegal transition, crashed keeper or crashed operation;
6. no secret (or 8-character piece of one) in ``/v1/status``, ``status.json``, the control
   answers, the daemon's log or the engines' logs.

A failure raises ``SoakFailure`` naming the seed, the step and the operation list, and the
environment variables that replay it (``GPUMGR_SOAK_SEED``, ``GPUMGR_SOAK_STEPS``).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psutil

from gpumgr.sim.harness import DAEMON_LOG_DEFECTS, create_sim_gpu, free_port, sim_gpu_path
from fake_http import JsonServer, Reply, Request
from reliability.rig import DEEPSEEK, QWEN_7B, QWEN_14B, Rig, settings

Json = dict[str, Any]

SEED_ENV, STEPS_ENV = "GPUMGR_SOAK_SEED", "GPUMGR_SOAK_STEPS"
CONVERGE_S = 45.0
"""The longest one step may take to converge (a daemon restart plus a cold start, loaded box)."""
START_TIMEOUT_S = 30.0
"""The daemon's ``vllm.start_timeout_s`` in the soak (its starts take a second): under
``CONVERGE_S``, so an operation on a frozen engine answers (failed) instead of hanging."""
DISPLAY_MIB = 300
"""What the simulated card's display holds (``simulate.gpus``' default): not any process's."""
CLOUD_KEY_ENV = "SOAK_CLOUD_KEY"
LOG_DEFECTS = (*DAEMON_LOG_DEFECTS, "operation.crashed", "internal error", "Traceback")
OLLAMA_MODEL = "qwen2.5-coder:7b"
CLOUD_MODEL = "deepseek-v3.1:671b-cloud"


@dataclass(frozen=True)
class Engine:
    """A vLLM provider of the soak's registry."""

    name: str
    repo: str
    served: str
    slot: str
    """Which port it listens on: ``a`` (the 7B and the 14B) or ``b`` (deepseek)."""
    status: str


ENGINES = (
    Engine("qwen-7b", QWEN_7B, "qwen-coder-vllm", "a", "active"),
    Engine("qwen-14b", QWEN_14B, "qwen-coder-14b-vllm", "a", "standby"),
    Engine("deepseek-6.7b", DEEPSEEK, "deepseek-coder-6.7b-vllm", "b", "standby"),
)
NAMES = tuple(e.name for e in ENGINES)

WEIGHTS: dict[str, int] = {
    "reload_description": 12, "reload_identity": 6, "reload_invalid": 7, "reload_status": 0, "reload_disable": 2,
    "sighup": 3, "start": 10, "stop": 9, "restart": 3, "swap": 9, "sleep": 5, "wake": 5,
    "race": 2, "engine_sigkill": 5, "engine_sigstop": 4, "daemon_sigkill": 3,
    "daemon_sigkill_mid": 3, "ollama_down": 2, "hub_down": 2, "cloud_echo": 2,
}
"""How often each kind is drawn. The cheap ones (reloads) are the most frequent: the soak's
count of operations is bought with them; the costly ones (a daemon restart) are rarer."""


@dataclass(frozen=True)
class Op:
    kind: str
    args: tuple[str, ...] = ()
    value: float = 0.0
    """A number the operation uses (a delay, a step count), drawn with it."""

    def __str__(self) -> str:
        tail = f" ({self.value:.2f})" if self.value else ""
        return " ".join((self.kind, *self.args)) + tail


PROMOTIONS_WEIGHT = 3
"""``reload_status`` (the owner's file marking ``qwen-7b`` or ``deepseek`` ``active``, or back):
a promotion can ask for a set the card cannot hold or for a port another engine serves; the
reload refuses those (``actions/admit.py``: ``refused`` in its answer, the backend ``stopped``
with the reason, not desired). Off by default only so that a seed replays the operation list it
always had; ``bench/soak.py --promotions`` turns it on."""


def plan_operations(seed: int, steps: int, promotions: bool = False) -> list[Op]:
    """The operation list of ``seed`` (the same list for the same seed, whatever happens)."""
    rng = random.Random(seed)
    table = {**WEIGHTS, "reload_status": PROMOTIONS_WEIGHT if promotions else 0}
    kinds, weights = zip(*table.items(), strict=True)
    ops: list[Op] = []
    for _ in range(steps):
        kind = rng.choices(kinds, weights)[0]
        a, b = rng.sample(NAMES, 2)
        if kind in ("start", "stop", "restart", "sleep", "wake", "engine_sigkill",
                    "reload_identity", "reload_description"):
            ops.append(Op(kind, (a,)))
        elif kind == "engine_sigstop":
            ops.append(Op(kind, (a,), float(rng.choice((0, 1, 2)))))  # SIGCONT after N steps
        elif kind in ("ollama_down", "hub_down"):
            ops.append(Op(kind, (), float(rng.choice((1, 2, 4)))))  # back after N steps
        elif kind == "reload_status":
            ops.append(Op(kind, (rng.choice(("qwen-7b", "deepseek-6.7b")),)))
        elif kind == "reload_disable":  # standby ones only: enabling them adds nothing to run
            ops.append(Op(kind, (rng.choice(NAMES[1:]),), float(rng.choice((1, 2, 3)))))
        elif kind == "swap":
            ops.append(Op(kind, (a, b)))
        elif kind == "race":
            ops.append(Op(kind, (a, b)))
        elif kind == "daemon_sigkill_mid":
            ops.append(Op(kind, (rng.choice(("swap", "start", "stop")), a, b),
                          round(rng.uniform(0.05, 1.5), 2)))
        else:
            ops.append(Op(kind))
    return ops


# -- upstream processes -------------------------------------------------------------------------


class Restartable:
    """A simulated upstream as a process on a fixed port, so it comes back where it was."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv, self.env = argv, env
        self.proc: subprocess.Popen[str] | None = None

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, ready: Callable[[str], bool]) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=self.env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once bound
        if not ready(line):
            self.kill()
            raise AssertionError(f"{self.argv[2]} did not start: {line!r}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class Cloud(JsonServer):
    """Ollama Cloud: lists its model to the right key; in ``echo`` mode answers 401 with 24
    characters of the key cut off in its error (the careless upstream of issue 18)."""

    def __init__(self, key: str) -> None:
        super().__init__(self._answer)
        self.key = key
        self.echo = False

    def _answer(self, request: Request) -> Reply:
        self.received.clear()  # nothing to keep: the soak runs long
        if self.echo:
            return Reply(401, {"error": f"invalid key {self.key[:24]}"})
        if request.headers.get("Authorization", "") != f"Bearer {self.key}":
            return Reply(401, {"error": "unauthorized"})
        return Reply(200, {"models": [{"name": CLOUD_MODEL.removesuffix("-cloud")}]})


# -- open-loop client traffic ---------------------------------------------------------------------


class Traffic:
    """Requests at a fixed rate whatever the answers (open loop): each has a timeout, so none
    hangs; one that finds every worker busy is counted as not sent rather than delayed."""

    def __init__(self, rate_per_s: float, timeout_s: float = 2.0, workers: int = 6) -> None:
        self.rate, self.timeout_s, self.workers = rate_per_s, timeout_s, workers
        self.targets: dict[int, str] = {}
        """port → served model name (what should answer there now)."""
        self.outcomes: Counter[str] = Counter()
        self.longest_s = 0.0
        self._lock = threading.Lock()
        self._in_flight = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="soak-client")
        self._http = httpx2.Client(timeout=httpx2.Timeout(timeout_s))
        self._thread = threading.Thread(target=self._run, name="soak-traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def _run(self) -> None:
        period, turn = 1.0 / self.rate, 0
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += period
            targets = sorted(self.targets.items())
            if not targets:
                continue
            port, model = targets[turn % len(targets)]
            turn += 1
            with self._lock:
                if self._in_flight >= self.workers:
                    self.outcomes["not sent (clients busy)"] += 1
                    continue
                self._in_flight += 1
            self._pool.submit(self._send, port, model)

    def _send(self, port: int, model: str) -> None:
        t0 = time.monotonic()
        try:
            r = self._http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={
                "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
            outcome = str(r.status_code)
        except httpx2.HTTPError as exc:
            outcome = type(exc).__name__
        took = time.monotonic() - t0
        with self._lock:
            self._in_flight -= 1
            self.outcomes[outcome] += 1
            self.longest_s = max(self.longest_s, took)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    @property
    def sent(self) -> int:
        return sum(n for k, n in self.outcomes.items() if not k.startswith("not sent"))

    @property
    def failed(self) -> int:
        return self.sent - self.outcomes["200"]


# -- the soak ---------------------------------------------------------------------------------------


class SoakFailure(AssertionError):
    """A broken invariant (or a hung operation); ``result`` holds the steps run until then."""

    result: SoakResult | None = None


@dataclass
class StepRecord:
    step: int
    op: Op
    outcome: str
    took_s: float
    converge_s: float


@dataclass
class SoakResult:
    seed: int
    steps: int
    records: list[StepRecord] = field(default_factory=list)
    checks_passed: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    request_longest_s: float = 0.0
    duration_s: float = 0.0

    def by_kind_outcome(self) -> Counter[tuple[str, str]]:
        return Counter((r.op.kind, _outcome_class(r.outcome)) for r in self.records)

    def converge_quantiles(self) -> tuple[float, float]:
        xs = sorted(r.converge_s for r in self.records)
        if not xs:
            return 0.0, 0.0
        return statistics.median(xs), xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]


def _outcome_class(outcome: str) -> str:
    """``ok``, ``refused 409``, ``refused 400``… (the message cut off) for the tables."""
    return outcome.split(":", 1)[0]


class Soak:
    """One daemon and its upstreams in ``tmp``; ``run()`` plays the operations; ``close()``
    (callers run it in a ``finally``) stops everything started."""

    def __init__(self, tmp: Path, seed: int, steps: int, *, rate_per_s: float = 6.0,
                 promotions: bool = False, say: Callable[[str], None] = lambda _line: None) -> None:
        self.tmp, self.seed, self.steps, self.say = tmp, seed, steps, say
        self.ops = plan_operations(seed, steps, promotions)
        self.result = SoakResult(seed, steps)
        self.secrets = ("ctl-" + secrets.token_hex(16), "sk-soak-" + secrets.token_hex(16))
        self.ports = {"a": free_port(), "b": free_port()}
        self.ollama_port, self.hub_port = free_port(), free_port()
        self.cloud = Cloud(self.secrets[1]).start()
        gpu_uuid = create_sim_gpu(tmp)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMGR_")}
        self.ollama = Restartable(
            [sys.executable, "-m", "gpumgr.sim.ollama", "--port", str(self.ollama_port),
             "--pulled", OLLAMA_MODEL],
            {**base_env, "GPUMGR_SIM_GPU_STATE": str(sim_gpu_path(tmp)),
             "CUDA_VISIBLE_DEVICES": gpu_uuid})
        self.hub = Restartable(
            [sys.executable, "-m", "gpumgr.sim.hub", "--port", str(self.hub_port)], base_env)
        # the registry as the reloads edit it: provider → field → value
        self.registry: dict[str, dict[str, Any]] = {
            e.name: {"status": e.status, "description": e.name, "max_num_seqs": 4}
            for e in ENGINES}
        self.rig = Rig(tmp, self._providers_yaml().removeprefix("providers:"), self._settings_yaml(), env={
            "GPUMGR_CONTROL_TOKEN": self.secrets[0], CLOUD_KEY_ENV: self.secrets[1]})
        self.traffic = Traffic(rate_per_s)
        self.frozen: dict[int, int] = {}
        """SIGSTOPped engine pid → the step at which it gets SIGCONT."""
        self.disabled: dict[str, tuple[int, str]] = {}
        """Provider disabled by ``reload_disable`` → (the step it is enabled again, its status)."""
        self.outages: dict[str, int] = {}
        """``ollama_down``/``hub_down`` → the step at which it comes back."""
        self._log_offset = 0
        self._t0 = time.monotonic()
        self._secret_pieces = {s[i:i + 8] for s in self.secrets for i in range(len(s) - 7)}

    # -- configuration --------------------------------------------------------------------------
    def _settings_yaml(self) -> str:
        # an engine's start and wake are bounded by start_timeout_s: under the soak's own bound
        # for an answer (a wake of a SIGSTOPped sleeper fails then, it does not hang the step)
        return settings(restart_unresponsive_after_s=2.0).replace(
            "load_seconds: 0.2", f"load_seconds: 0.1\n  hub_endpoint: http://127.0.0.1:{self.hub_port}"
        ).replace("start_timeout_s: 60", f"start_timeout_s: {START_TIMEOUT_S:g}")

    def _providers_yaml(self) -> str:
        out = f"""providers:
  ollama:
    type: ollama
    base_url: http://127.0.0.1:{self.ollama_port}
    status: active
    models: [{OLLAMA_MODEL}]
  ollama-cloud:
    type: ollama_cloud
    base_url: {self.cloud.base_url}
    status: active
    requires_api_key: true
    env_var: {CLOUD_KEY_ENV}
    models: [{CLOUD_MODEL}]
"""
        for e in ENGINES:
            r = self.registry[e.name]
            out += f"""  {e.name}:
    type: vllm
    base_url: http://127.0.0.1:{self.ports[e.slot]}
    status: {r["status"]}
    description: "{r["description"]}"
    max_model_len: 4096
    max_num_seqs: {r["max_num_seqs"]}
    swap_mode: sleep
    models:
      - name: {e.served}
        hf_repo: {e.repo}
"""
        return out

    def _write_registry(self, text: str | None = None) -> None:
        (self.rig.daemon.config_dir / "providers.yaml").write_text(text or self._providers_yaml())

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.hub.start(lambda line: line.startswith("listening"))
        self.ollama.start(lambda line: '"listening"' in line)
        self.rig.daemon.start()
        self.traffic.start()

    def close(self) -> None:
        self.traffic.stop()
        for pid in list(self.frozen):
            _signal_group(pid, signal.SIGCONT)
        self.rig.close(check_log=False)
        self.ollama.kill()
        self.hub.kill()
        self.cloud.stop()

    def run(self) -> SoakResult:
        t0 = self._t0 = time.monotonic()
        self._converge(-1, "the first boot")
        for i, op in enumerate(self.ops):
            self._resume_frozen(i)
            t_op = time.monotonic()
            try:
                outcome = self._do(i, op)
            except SoakFailure as exc:
                if "chaos soak failed" in str(exc):
                    raise
                self._fail(i, str(exc))
            except Exception as exc:  # noqa: BLE001 - the soak's own step failed: say where
                self._fail(i, f"{op} raised {type(exc).__name__}: {exc}")
            took = time.monotonic() - t_op
            t_conv = time.monotonic()
            self._converge(i, str(op))
            self.result.records.append(StepRecord(i, op, outcome, took, time.monotonic() - t_conv))
            self.say(f"step {i:4d} {str(op):45.45s} {outcome[:60]:60.60s} "
                     f"{took:5.2f}+{time.monotonic() - t_conv:5.2f}s")
        self._check_engine_logs(len(self.ops))
        self.result.duration_s = time.monotonic() - t0
        self.result.requests = Counter(self.traffic.outcomes)
        self.result.request_longest_s = self.traffic.longest_s
        return self.result

    # -- failing so that it replays ---------------------------------------------------------------
    def _fail(self, step: int, what: str) -> None:
        listed = "\n".join(f"  {'>' if j == step else ' '}{j:4d} {op}"
                           for j, op in enumerate(self.ops[:step + 1]))
        self.result.duration_s = time.monotonic() - self._t0
        self.result.requests = Counter(self.traffic.outcomes)
        self.result.request_longest_s = self.traffic.longest_s
        failure = SoakFailure(
            f"chaos soak failed at step {step} of seed {self.seed}: {what}\n"
            f"replay: {SEED_ENV}={self.seed} {STEPS_ENV}={step + 1}\n"
            f"operations:\n{listed}\ndaemon log: {self.rig.daemon.log_path}")
        failure.result = self.result
        raise failure

    # -- operations ------------------------------------------------------------------------------
    def _control(self, op: str, body: Json | None = None, timeout_s: float = CONVERGE_S) -> str:
        """One control request over the socket; its outcome as one line (a request that gets
        no answer in ``timeout_s`` is a hung operation: raised)."""
        with self.rig.control_client(timeout_s) as c:
            try:
                r = c.post(f"/v1/control/{op}", json=body if body is not None else {})
            except httpx2.TimeoutException:
                raise SoakFailure(f"{op} {body or ''} got no answer within {timeout_s:g} s") from None
        self._check_secrets(r.text, f"the answer to {op}")
        if r.status_code != 200:
            try:
                detail = str(r.json().get("detail", r.text))
            except ValueError:
                detail = r.text
            return f"refused {r.status_code}: {detail.splitlines()[0] if detail else ''}"
        lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
        last = lines[-1] if lines else {}
        if op == "reload":
            return "ok: " + " ".join(f"{k}={v}" for k, v in last.items()
                                     if k in ("started", "stopped", "restarted", "refused") and v)
        if last.get("event") == "done" and last.get("ok"):
            return f"ok: {last.get('message', '')}"
        return f"failed: {last.get('error', last)}"

    def _do(self, step: int, op: Op) -> str:
        kind, args = op.kind, op.args
        if kind in ("start", "stop", "restart", "sleep", "wake"):
            return self._control(kind, {"name": args[0]})
        if kind == "swap":
            return self._control("swap", {"old": args[0], "new": args[1]})
        if kind == "race":
            return self._race(args)
        if kind == "reload_description":
            self.registry[args[0]]["description"] = f"{args[0]} (edit {step})"
            self._write_registry()
            return self._control("reload")
        if kind == "reload_identity":
            r = self.registry[args[0]]
            r["max_num_seqs"] = 8 if r["max_num_seqs"] == 4 else 4
            self._write_registry()
            return self._control("reload")
        if kind == "reload_status":  # qwen-7b active <-> standby, deepseek standby <-> active
            r = self.registry[args[0]]
            first = next(e.status for e in ENGINES if e.name == args[0])
            if r["status"] == "disabled":
                return "skipped: disabled"
            r["status"] = ({"active", "standby"} - {first}).pop() if r["status"] == first else first
            self._write_registry()
            return self._control("reload")
        if kind == "reload_disable":
            r = self.registry[args[0]]
            if r["status"] == "disabled":
                return "skipped: disabled"
            self.disabled[args[0]] = (step + int(op.value), r["status"])
            r["status"] = "disabled"
            self._write_registry()
            return self._control("reload")
        if kind == "reload_invalid":
            self._write_registry(self._providers_yaml().replace("max_num_seqs: ", "max_num_seqs: -", 1))
            outcome = self._control("reload")
            self._write_registry()
            if not outcome.startswith("refused 400"):
                self._fail(step, f"an invalid registry was not refused: {outcome}")
            return "invalid: " + outcome
        if kind == "sighup":
            self.registry["qwen-14b"]["description"] = f"edit {step} by SIGHUP"
            self._write_registry()
            os.kill(self.rig.daemon_pid(), signal.SIGHUP)
            return "ok: sent"
        if kind == "engine_sigkill":
            pid = self._engine_pid(args[0])
            if pid is None:
                return "skipped: not running"
            _signal_group(pid, signal.SIGKILL)
            return f"ok: killed {pid}"
        if kind == "engine_sigstop":
            pid = self._engine_pid(args[0])
            if pid is None or pid in self.frozen:
                return "skipped: not running"
            _signal_group(pid, signal.SIGSTOP)
            self.frozen[pid] = step + int(op.value)
            return f"ok: stopped {pid} for {int(op.value)} step(s)"
        if kind == "daemon_sigkill":
            self._kill_daemon()
            self.rig.daemon.start()
            return "ok: restarted"
        if kind == "daemon_sigkill_mid":
            return self._kill_mid(op)
        if kind in ("ollama_down", "hub_down"):
            upstream = self.ollama if kind == "ollama_down" else self.hub
            if not upstream.up:
                return "skipped: already down"
            upstream.kill()
            self.outages[kind] = step + int(op.value)
            return f"ok: down for {int(op.value)} step(s)"
        if kind == "cloud_echo":
            self.cloud.echo = not self.cloud.echo
            return "ok: echo on" if self.cloud.echo else "ok: echo off"
        raise AssertionError(f"unknown operation {kind}")

    def _race(self, args: tuple[str, ...]) -> str:
        """Two operator mutations at once: at most one may be accepted (the other 409)."""
        outcomes: list[str] = []

        def send(op: str, body: Json) -> None:
            try:
                outcomes.append(self._control(op, body))
            except SoakFailure as exc:  # a secret in an answer: reported by the step
                outcomes.append(f"SOAK FAILURE {exc}")

        threads = [threading.Thread(target=send, args=(o, body))
                   for o, body in (("start", {"name": args[0]}), ("stop", {"name": args[1]}))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(CONVERGE_S + 5)
        failed = [o for o in outcomes if o.startswith("SOAK FAILURE")]
        if failed or len(outcomes) < 2:
            raise SoakFailure(failed[0] if failed else "a racing request got no answer")
        return " | ".join(sorted(outcomes))

    def _kill_daemon(self) -> None:
        d = self.rig.daemon
        assert d.proc is not None
        d.proc.kill()
        d.proc.wait(10)

    def _kill_mid(self, op: Op) -> str:
        """An operation under way when the daemon is SIGKILLed ``op.value`` s after it was sent."""
        what, a, b = op.args
        body = {"old": a, "new": b} if what == "swap" else {"name": a}
        answers: list[str] = []

        def send() -> None:
            try:
                answers.append(self._control(what, body, timeout_s=30))
            except httpx2.HTTPError as exc:
                answers.append(f"cut: {type(exc).__name__}")

        t = threading.Thread(target=send)
        t.start()
        time.sleep(op.value)
        self._kill_daemon()
        t.join(30)
        self.rig.daemon.start()
        return f"ok: killed during {what}: " + (answers[0] if answers else "no answer")

    def _resume_frozen(self, step: int) -> None:
        """SIGCONT to the engines whose pause is over; the upstreams whose outage is over back."""
        for kind, at in list(self.outages.items()):
            if at <= step:
                if kind == "ollama_down":
                    self.ollama.start(lambda line: '"listening"' in line)
                else:
                    self.hub.start(lambda line: line.startswith("listening"))
                del self.outages[kind]
        back = [n for n, (at, _) in self.disabled.items() if at <= step]
        for name in back:
            self.registry[name]["status"] = self.disabled.pop(name)[1]
        if back:
            self._write_registry()
            outcome = self._control("reload")
            if not outcome.startswith("ok"):
                self._fail(step, f"enabling {back} again by a reload: {outcome}")
        for pid, at in list(self.frozen.items()):
            if at <= step:
                _signal_group(pid, signal.SIGCONT)
                del self.frozen[pid]

    # -- observing ------------------------------------------------------------------------------
    def _live_engines(self) -> dict[int, int]:
        """pid → port of every engine process alive now (from the engines' own events)."""
        out: dict[int, int] = {}
        for e in self.rig.engine_events():
            if e.get("event") == "init_start" and _alive(int(e["pid"])):
                out[int(e["pid"])] = int(e["port"])
        return out

    def _engine_pid(self, name: str) -> int | None:
        try:
            b = self.rig.daemon.backend(name)
        except (httpx2.HTTPError, KeyError, ValueError):
            return None
        return int(b["pid"]) if b.get("pid") and _alive(int(b["pid"])) else None

    def _desired(self) -> Json:
        path = self.tmp / "state" / "desired.json"
        try:
            doc: Json = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return doc

    def _children(self) -> set[int]:
        return set(self.rig.daemon.recorded_pids())

    def _not_converged(self) -> str | None:
        """Why the daemon has not converged yet (None once it has)."""
        d = self.rig.daemon
        if d.proc is None or d.proc.poll() is not None:
            return "the daemon is not running"
        try:
            r = d.get("/v1/status")
            doc = r.json()
        except (httpx2.HTTPError, ValueError) as exc:
            return f"no status ({type(exc).__name__})"
        self._status_text = r.text
        if not doc.get("adoption_done"):
            return "adoption not done"
        desired = self._desired()
        if "intent" in desired:
            return f"intent left: {desired['intent'].get('operation')}"
        wanted = desired.get("backends", {})
        frozen_names = set()
        unfit: set[str] = set()
        backends = {b["name"]: b for b in doc["backends"]}
        for name in NAMES:
            b = backends.get(name)
            if b is None:
                return f"{name} missing from the status"
            if b.get("pid") in self.frozen:
                frozen_names.add(name)
                continue
            if name in wanted:
                want = "sleeping" if wanted[name].get("asleep") else "up"
                if b["state"] == "failed" and "does not fit" in (b.get("detail") or ""):
                    unfit.add(name)  # the owner's file asks for more than the card holds: said
                    continue
                if b["state"] != want or not b.get("pid"):
                    return f"{name} is {b['state']} (pid {b.get('pid')}), desired {want}"
            elif b["state"] not in ("stopped", "disabled"):
                return f"{name} is {b['state']} (pid {b.get('pid')}), not desired"
        ollama = backends["ollama"]["state"]
        if (ollama == "up") != self.ollama.up:
            return f"ollama is {ollama} while its process is {'up' if self.ollama.up else 'down'}"
        live = self._live_engines()
        shown = {int(b["pid"]) for b in doc["backends"] if b.get("managed") and b.get("pid")}
        if set(live) - shown - set(self.frozen):
            return f"engines {sorted(set(live) - shown)} alive but not in the status (yet)"
        self._doc, self._wanted, self._unfit = doc, wanted, unfit
        return None

    def _converge(self, step: int, what: str) -> None:
        deadline = time.monotonic() + CONVERGE_S
        why = self._not_converged()
        while why is not None:
            if time.monotonic() > deadline:
                self._fail(step, f"not converged {CONVERGE_S:g} s after {what}: {why}")
            time.sleep(0.05)
            why = self._not_converged()
        self._check(step)
        self._update_targets()

    def _update_targets(self) -> None:
        served = {}
        for e in ENGINES:
            entry = self._wanted.get(e.name)
            if entry is not None and not entry.get("asleep"):
                served[self.ports[e.slot]] = e.served
        self.traffic.targets = served

    # -- invariants -------------------------------------------------------------------------------
    def _check(self, step: int) -> None:
        checks: list[tuple[str, Callable[[], str | None]]] = [
            ("one engine per port", self._one_per_port),
            ("running equals desired", self._running_is_desired),
            ("no untracked engine", self._all_tracked),
            ("GPU memory counted once", self._memory_once),
            ("clean daemon log", self._clean_log),
            ("no secret published", self._no_secret_published),
        ]
        for name, check in checks:
            problem = check()
            if problem is not None:
                self._fail(step, f"invariant '{name}' broken: {problem}")
            self.result.checks_passed += 1
        if step % 25 == 24:
            self._check_engine_logs(step)

    def _one_per_port(self) -> str | None:
        by_port: dict[int, list[int]] = {}
        for pid, port in self._live_engines().items():
            by_port.setdefault(port, []).append(pid)
        crowded = {p: pids for p, pids in by_port.items() if len(pids) > 1}
        return f"port → live engines {crowded}" if crowded else None

    def _running_is_desired(self) -> str | None:
        awake = {n for n, e in self._wanted.items() if not e.get("asleep")} - self._unfit
        asleep = {n for n, e in self._wanted.items() if e.get("asleep")}
        frozen = {b["name"] for b in self._doc["backends"] if b.get("pid") in self.frozen}
        up = {b["name"] for b in self._doc["backends"] if b.get("managed") and b["state"] == "up"}
        sleeping = {b["name"] for b in self._doc["backends"] if b["state"] == "sleeping"}
        if (up - frozen, sleeping - frozen) != (awake - frozen, asleep - frozen):
            return f"up {sorted(up)} sleeping {sorted(sleeping)}; desired awake {sorted(awake)} asleep {sorted(asleep)}"
        return None

    def _all_tracked(self) -> str | None:
        live = set(self._live_engines())
        recorded = self._children()
        shown = {int(b["pid"]) for b in self._doc["backends"] if b.get("managed") and b.get("pid")}
        if live - recorded:
            return f"live engines {sorted(live - recorded)} not in children.json {sorted(recorded)}"
        if live - shown:
            return f"live engines {sorted(live - shown)} not in the status {sorted(shown)}"
        if shown - live:
            return f"the status shows pids {sorted(shown - live)} that are not alive"
        return None

    def _memory_once(self) -> str | None:
        snap = self.rig.daemon.sim_gpu().read()
        gpu = snap.gpus[0]
        held = sum(a.used_mib for a in snap.allocations)
        if snap.used_mib(gpu.uuid) != held + DISPLAY_MIB:
            return f"used {snap.used_mib(gpu.uuid)} MiB != allocations {held} + display {DISPLAY_MIB}"
        holders = {a.pid for a in snap.allocations}
        ours = set(self._live_engines()) | ({self.ollama.proc.pid} if self.ollama.up and self.ollama.proc else set())
        if holders - ours:
            return f"memory held by {sorted(holders - ours)}, no engine or Ollama of this soak"
        pids = [p["pid"] for g in self._doc.get("gpus", []) for p in g.get("processes", [])]
        if len(pids) != len(set(pids)):
            return f"the status lists a GPU process twice: {pids}"
        return None

    def _clean_log(self) -> str | None:
        text = self.rig.daemon.log_text()
        new, self._log_offset = text[self._log_offset:], len(text)
        bad = [ln for ln in new.splitlines() if any(d in ln for d in LOG_DEFECTS)]
        problem = self._secret_in(new, "the daemon log")
        if problem is not None:
            return problem
        return ("the daemon log shows:\n" + "\n".join(bad[:5])) if bad else None

    def _no_secret_published(self) -> str | None:
        for text, where in ((self._status_text, "/v1/status"),
                            (_read(self.rig.daemon.status_path), "status.json")):
            problem = self._secret_in(text, where)
            if problem is not None:
                return problem
        return None

    def _secret_in(self, text: str, where: str) -> str | None:
        for s in self.secrets:
            if s in text:
                return f"a whole secret in {where}"
        found = [p for p in self._secret_pieces if p in text]
        return f"pieces {found[:3]} of a secret in {where}" if found else None

    def _check_secrets(self, text: str, where: str) -> None:
        problem = self._secret_in(text, where)
        if problem is not None:
            raise SoakFailure(problem)

    def _check_engine_logs(self, step: int) -> None:
        for path in sorted((self.tmp / "log").glob("*")):
            if path.is_file():
                problem = self._secret_in(_read(path), str(path.name))
                if problem is not None:
                    self._fail(step, problem)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def seed_and_steps(default_steps: int) -> tuple[int, int]:
    """``GPUMGR_SOAK_SEED`` (else a fresh random seed, printed by a failure) and
    ``GPUMGR_SOAK_STEPS`` (else ``default_steps``)."""
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1, 10**6))
    return seed, int(os.environ.get(STEPS_ENV) or default_steps)


def run_soak(tmp: Path, seed: int, steps: int, *, rate_per_s: float = 6.0,
             promotions: bool = False, say: Callable[[str], None] = lambda _line: None) -> SoakResult:
    soak = Soak(tmp, seed, steps, rate_per_s=rate_per_s, promotions=promotions, say=say)
    try:
        soak.start()
        return soak.run()
    finally:
        soak.close()
