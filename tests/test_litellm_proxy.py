"""End to end: a real LiteLLM proxy (litellm[proxy]==1.108.7, the ``litellm`` extra) routes by the
status of a real ``gpumgr daemon --simulate``, through the generated config and the callback.

Everything runs on 127.0.0.1 with ports chosen at run time: the daemon (simulated GPU, a 7B vLLM
engine and its standby 14B swap partner on the same port), the simulated Ollama (one model pulled,
one not), a fake Ollama Cloud (``JsonServer``, switchable to 429), and the proxy, started offline
(``LITELLM_LOCAL_MODEL_COST_MAP=True``) on ``gpumgr litellm-config``'s output. A second callback,
written beside the config (LiteLLM loads ``<config dir>/<module>.py`` first), records every
attempt the router makes — success or failure, with its ``api_base`` — so the test counts the
requests that reach each backend, dead ports included, without changing how the router behaves.

The proxy runs from its own venv (``.venv-litellm``, or ``$GPUMGR_LITELLM_BIN``), as a router
does; skipped, with the reason, when there is none.
The engines are probed with the daemon's own defaults (``health.engine_interval_s`` /
``engine_timeout_s``, 0.5 s / 0.5 s, 3 attempts, jitter): the hung-engine scenario measures
what a box does out of the box. Only the other backends (Ollama through the registry's
``health_checks``, the cloud through ``cloud_interval_s``) and engine starts are made fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _litellm_bin() -> Path | None:
    """The proxy's executable: ``$GPUMGR_LITELLM_BIN``, else ``.venv-litellm/bin/litellm``
    (scripts/test.sh builds that venv: ``GPUMGR_VENV=.venv-litellm scripts/bootstrap.sh litellm``).
    Its own venv, as a router has: litellm 1.108.7 pins huggingface_hub < 2, which would replace
    the one gpumgr's venv needs."""
    given = os.environ.get("GPUMGR_LITELLM_BIN")
    path = Path(given) if given else REPO_ROOT / ".venv-litellm" / "bin" / "litellm"
    return path if path.is_file() and os.access(path, os.X_OK) else None


LITELLM_BIN = _litellm_bin()
if LITELLM_BIN is None:
    pytest.skip(
        "no LiteLLM proxy: set GPUMGR_LITELLM_BIN or build .venv-litellm "
        "(GPUMGR_VENV=.venv-litellm bash scripts/bootstrap.sh litellm)",
        allow_module_level=True,
    )

from gpumgr.sim.harness import (  # noqa: E402
    FAST_LIFECYCLE_YAML,
    DaemonHarness,
    free_port,
    sim_gpu_path,
    vllm_provider_yaml,
    wait_for,
)
from fake_http import JsonServer, Reply, Request  # noqa: E402
from gpumgr.config import load_config  # noqa: E402
from gpumgr.integrations.litellm_config import CALLBACK, litellm_config, render_yaml  # noqa: E402
from gpumgr.sim.gpu import SimGpuSpec, SimGpuState, sim_uuid  # noqa: E402
from gpumgr.sim.ollama_process import SimOllamaProcess, start_sim_ollama  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.litellm]

ENGINE = "qwen-7b"
VLLM_NAME = "qwen-coder-vllm"
PULLED = "qwen2.5-coder:7b"
NOT_PULLED = "llama3.1:latest"
CLOUD_NAME = "qwen3-coder:480b-cloud"
KEY_ENV = "E2E_OLLAMA_CLOUD_KEY"
MASTER_KEY = "sk-e2e-master"
RETURN_WITHIN_S = 1.0
"""Traffic is back at a restarted engine this soon after the status says it is up (pushed to the
router: measured well under 0.5 s; LiteLLM's own cooldown would keep it out for seconds)."""
FAST_S = 2.5
"""A request that goes down the chain at once (measured 0.05-0.14 s; 1.1 s seen on the loaded
2-core machine), against LiteLLM's retry back-off it would otherwise wait out (4-5 s or more)."""
SKIP_HUNG_WITHIN_S = 1.5
"""Issue 12: with the default health settings the router stops sending to a hung engine within
this long of the hang."""
ROUTER_REACTION_S = 1.0
"""On a loaded machine the daemon's probes (0.5 s timeout) may flag the hang later than usual:
then the router must stop within this long of the status saying ``suspect`` (it is pushed at
once; measured tens of ms). The 1.5 s figure itself is bench/detection.py's and bench/router.py's."""
HUNG_FOR_S = 5.0
HEALTH_YAML = """
health:
  jitter_s: 0.1
  starting_poll_s: 0.1
  cloud_interval_s: 0.3
  restart_unresponsive_after_s: 600
"""
"""No ``interval_s``/``timeout_s``/``retry_attempts``: the engines get the daemon's defaults
(0.5 s / 0.5 s / 3). Restarting a hung engine is pushed out of the tests' way."""
CARD_MIB = 16384
"""The reference box's 16 GiB card: the 14B needs the room of the local Ollama's loaded model
(the 7B's first fallback, so loaded whenever the engines are out, a swap included). The swap's
check counts that model as unloadable (``ollama.eviction: unload_idle``), and the status marks
it unavailable before it is unloaded, so the fallback traffic does not load it straight back."""
LIFECYCLE_YAML = FAST_LIFECYCLE_YAML.replace(
    "simulate:\n", f"simulate:\n  gpus: [{{memory_total_mib: {CARD_MIB}}}]\n")
OTHER_BACKENDS_HEALTH_YAML = """
health_checks:
  interval_seconds: 0.2
  timeout_seconds: 1.0
"""
"""The registry's probe timing, which applies to the backends gpumgr does not run (Ollama):
probed often, with a timeout a loaded machine cannot miss (no test here hangs Ollama)."""

MAPPINGS = f"""
exact_matches:
  {VLLM_NAME}: {{provider: {ENGINE}, priority: primary}}
  qwen-coder-14b-vllm: {{provider: qwen-14b, priority: primary}}
  {PULLED}: {{provider: ollama, priority: secondary}}
  {NOT_PULLED}: {{provider: ollama, priority: secondary}}
  {CLOUD_NAME}: {{provider: ollama-cloud, priority: primary}}
fallback_chains:
  {VLLM_NAME}: {{chain: [{PULLED}, {CLOUD_NAME}]}}
  qwen-coder-14b-vllm: {{chain: [{VLLM_NAME}, {PULLED}]}}
  {NOT_PULLED}: {{chain: [{CLOUD_NAME}, {PULLED}]}}
  {CLOUD_NAME}: {{chain: [{PULLED}]}}
"""

COUNTER = '''
"""Test instrumentation: one JSON line per attempt the router makes (written by the e2e test)."""
import json, os, time
from litellm.integrations.custom_logger import CustomLogger

class Counter(CustomLogger):
    def _record(self, kwargs, ok, start_time, end_time):
        params = kwargs.get("litellm_params") or {}
        now = time.monotonic()
        try:  # the call's start (a wall-clock datetime) on the monotonic clock the test reads
            started = now - (time.time() - start_time.timestamp())
        except Exception:
            started = None
        line = {"t": now, "started": started, "ok": ok, "api_base": params.get("api_base"),
                "model": kwargs.get("model"), "group": (params.get("metadata") or {}).get("model_group")}
        with open(os.environ["E2E_ATTEMPTS_FILE"], "a") as f:
            f.write(json.dumps(line) + "\\n")

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, True, start_time, end_time)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, False, start_time, end_time)

counter = Counter()
'''


class FakeCloud(JsonServer):
    """Ollama Cloud's API as LiteLLM and gpumgr use it; ``rate_limited`` answers 429 (no
    Retry-After, as the real one does)."""

    def __init__(self) -> None:
        super().__init__(self._answer)
        self.rate_limited = False
        self.chats = 0

    def _answer(self, request: Request) -> Reply:
        if self.rate_limited:
            return Reply(429, {"error": "you have reached your usage limit"})
        if request.path == "/api/tags":
            return Reply(200, {"models": [{"name": CLOUD_NAME, "model": CLOUD_NAME}]})
        if request.path == "/api/show":
            return Reply(200, {"model_info": {}, "details": {}})
        if request.path == "/api/chat":
            self.chats += 1
            body = json.loads(request.body or b"{}")
            return Reply(200, {
                "model": body.get("model", CLOUD_NAME), "created_at": "2025-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": "from the cloud"}, "done": True,
                "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 3,
            })
        return Reply(404, {"error": "not found"})


def providers_yaml(port: int, ollama_url: str, cloud_url: str) -> str:
    standby = vllm_provider_yaml("qwen-14b", port, served="qwen-coder-14b-vllm",
                                 repo="Qwen/Qwen2.5-Coder-14B-Instruct-AWQ")
    standby = standby.replace("status: active", "status: standby")
    return OTHER_BACKENDS_HEALTH_YAML + "providers:" + vllm_provider_yaml(
        ENGINE, port, served=VLLM_NAME) + standby + f"""
  ollama:
    type: ollama
    base_url: {ollama_url}
    status: active
    models: [{PULLED}, {NOT_PULLED}]
  ollama-cloud:
    type: ollama_cloud
    base_url: {cloud_url}
    status: active
    requires_api_key: true
    env_var: {KEY_ENV}
    models: [{CLOUD_NAME}]
"""


@dataclass
class Result:
    sent_at: float
    took_s: float
    status: int
    api_base: str
    error: str = ""


@dataclass
class Stack:
    harness: DaemonHarness
    ollama: SimOllamaProcess
    cloud: FakeCloud
    proxy: subprocess.Popen[bytes]
    proxy_url: str
    attempts_file: Path
    engine_port: int
    proxy_log: Path
    client: httpx2.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx2.Client(
            base_url=self.proxy_url, timeout=30,
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        )

    def ask(self, model: str) -> Result:
        start = time.monotonic()
        try:
            r = self.client.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            })
            status, base, error = r.status_code, r.headers.get("x-litellm-model-api-base", ""), (
                "" if r.status_code == 200 else r.text[:300])
        except httpx2.HTTPError as exc:
            status, base, error = 0, "", repr(exc)
        return Result(start, time.monotonic() - start, status, base, error)

    def attempts(self) -> list[dict[str, Any]]:
        if not self.attempts_file.exists():
            return []
        return [json.loads(line) for line in self.attempts_file.read_text().splitlines()]

    def at_engine(self, result_or_base: Result | str) -> bool:
        base = result_or_base.api_base if isinstance(result_or_base, Result) else result_or_base
        return f":{self.engine_port}" in (base or "")


def _proxy_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"litellm exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    try:
        return httpx2.get(url + "/health/liveliness", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


def reference_card_with_ollama(tmp: Path) -> SimOllamaProcess:
    """The owner's 16 GiB Turing card (simulated, in ``tmp``) and a simulated Ollama on it with
    the pulled model."""
    gpu_uuid = sim_uuid(0)
    SimGpuState(sim_gpu_path(tmp)).ensure([SimGpuSpec(
        index=0, uuid=gpu_uuid, name="Quadro RTX 5000", memory_total_mib=CARD_MIB,
        display_used_mib=300, compute_capability="7.5")])
    return start_sim_ollama(
        [PULLED], env={"GPUMGR_SIM_GPU_STATE": str(sim_gpu_path(tmp)),
                       "CUDA_VISIBLE_DEVICES": gpu_uuid})


def proxy_env(harness: DaemonHarness, attempts_file: Path, **extra: str) -> dict[str, str]:
    """The proxy's environment: this one without gpumgr's and LiteLLM's own variables, then
    the master key, offline start, the daemon's status URL, the attempts log and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUMGR_", "LITELLM"))}
    env.update({
        # This LiteLLM refuses to start without a master key, auth off or not.
        "LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "GPUMGR_STATUS_URL": harness.base_url + "/v1/status",
        "E2E_ATTEMPTS_FILE": str(attempts_file), "NO_PROXY": "*",
        "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "True",
        **extra,
    })
    return env


@contextlib.contextmanager
def running_proxy(proxy_dir: Path, port: int, env: dict[str, str], log: Path,
                  ready_s: float = 90) -> Iterator[subprocess.Popen[bytes]]:
    """A LiteLLM proxy on ``proxy_dir/config.yaml`` at 127.0.0.1:``port`` (its own session, its
    output in ``log``), ready on its liveliness route; SIGTERM, then SIGKILL, on the way out."""
    assert LITELLM_BIN is not None
    with open(log, "wb") as out:
        proxy = subprocess.Popen(
            [str(LITELLM_BIN), "--config", str(proxy_dir / "config.yaml"),
             "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=proxy_dir,
        )
    try:
        wait_for(lambda: _proxy_ready(f"http://127.0.0.1:{port}", proxy, log), ready_s,
                 "the LiteLLM proxy", 0.2)
        yield proxy
    finally:
        if proxy.poll() is None:
            os.killpg(proxy.pid, signal.SIGTERM)
            try:
                proxy.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proxy.pid, signal.SIGKILL)
                proxy.wait()


@contextlib.contextmanager
def running_stack(tmp: Path, *, status_filter: bool = True,
                  request_timeout_s: int = 30) -> Iterator[Stack]:
    """The daemon, the simulated Ollama, the fake cloud and a proxy on the generated config
    (``status_filter=False``: the same config with the callback line removed, LiteLLM alone);
    everything stopped on the way out. bench/router.py runs it too."""
    cloud = FakeCloud().start()
    ollama: SimOllamaProcess | None = None
    harness: DaemonHarness | None = None
    try:
        ollama = reference_card_with_ollama(tmp)
        engine_port = free_port()
        harness = DaemonHarness(
            tmp, providers_yaml(engine_port, ollama.base_url, cloud.base_url),
            HEALTH_YAML + LIFECYCLE_YAML,
            env={KEY_ENV: "sk-e2e-cloud"},
        )
        (harness.config_dir / "model-mappings.yaml").write_text(MAPPINGS)
        harness.start()
        harness.wait_up(ENGINE)
        # The callback acts only on a daemon that says its states are facts (docs/status.md).
        wait_for(lambda: (doc := harness.status()).get("adoption_done")
                 and doc.get("first_probe_round_done"), 10,
                 "adoption_done and first_probe_round_done in /v1/status (the daemon must call "
                 "StatusPublisher.mark_adoption_done() and mark_first_probe_round_done())")

        cfg = load_config(harness.config_dir, env={})
        proxy_dir = tmp / "proxy"
        proxy_dir.mkdir()
        config = litellm_config(cfg.providers_file, cfg.mappings, request_timeout_s=request_timeout_s)
        callbacks = config["litellm_settings"]["callbacks"]
        if not status_filter:
            callbacks.remove(CALLBACK)
        callbacks.append("gpumgr_e2e_counter.counter")
        (proxy_dir / "config.yaml").write_bytes(render_yaml(config))
        (proxy_dir / "gpumgr_e2e_counter.py").write_text(COUNTER)
        port = free_port()
        proxy_log = tmp / "litellm.log"
        attempts_file = tmp / "attempts.jsonl"
        env = proxy_env(harness, attempts_file, **{KEY_ENV: "sk-e2e-cloud"})
        with running_proxy(proxy_dir, port, env, proxy_log) as proxy:
            url = f"http://127.0.0.1:{port}"
            s = Stack(harness, ollama, cloud, proxy, url, attempts_file, engine_port, proxy_log)
            # Warm: the callback follows the daemon once the first request has gone through.
            wait_for(lambda: s.ask(VLLM_NAME).status == 200, 30, "a first answer through the proxy")
            yield s
            s.client.close()
    finally:
        if harness is not None:
            harness.cleanup(check_log=False)
        if ollama is not None:
            ollama.stop()
        cloud.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("litellm-e2e")) as s:
        yield s


def test_all_up_requests_reach_the_vllm_engine(stack: Stack) -> None:
    results = [stack.ask(VLLM_NAME) for _ in range(5)]
    assert all(r.status == 200 for r in results), [r.error for r in results]
    assert all(stack.at_engine(r) for r in results), [r.api_base for r in results]
    assert stack.ask(PULLED).status == 200 and stack.ask(CLOUD_NAME).status == 200


class Traffic:
    """Sequential requests for one name from a thread until stopped."""

    def __init__(self, stack: Stack, model: str, gap_s: float = 0.02) -> None:
        self.stack, self.model, self.gap_s = stack, model, gap_s
        self.results: list[Result] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results.append(self.stack.ask(self.model))
            self._stop.wait(self.gap_s)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def test_a_killed_engine_is_skipped_and_traffic_returns_when_it_is_up(stack: Stack) -> None:
    h = stack.harness
    pid = int(h.wait_up(ENGINE)["pid"])
    with Traffic(stack, VLLM_NAME) as traffic:
        wait_for(lambda: len(traffic.results) >= 5, 20, "traffic before the kill")
        killed_wall, killed_at = time.time(), time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not h.backend(ENGINE)["available"], 15, "the engine unavailable", 0.005)
        up = h.wait_backend(ENGINE, lambda b: b["available"] and b.get("pid") not in (None, pid),
                            30, "the restarted engine up", )
        up_at = time.monotonic()
        wait_for(lambda: any(r.sent_at > up_at + RETURN_WITHIN_S + 0.3 for r in traffic.results),
                 10, "traffic after the engine is back")
    assert up["pid"] != pid
    rs = traffic.results
    failures = [r for r in rs if r.status != 200]
    assert not failures, [(r.status, r.error) for r in failures]
    # "during" ends when the daemon itself published the new engine up (its log, on its own
    # clock): the router follows that event, and this test's status poll may see it later
    (published,) = [
        e for e in h.events() if e.get("event") == "backend.state" and e.get("backend") == ENGINE
        and e.get("new") == "up"
        and datetime.fromisoformat(e["timestamp"]).timestamp() > killed_wall]  # fmt: skip
    published_wall = datetime.fromisoformat(published["timestamp"]).timestamp()
    up_published_at = killed_at + (published_wall - killed_wall)
    during = [r for r in rs if killed_at + 0.1 < r.sent_at < up_published_at - 0.1]
    assert during and not any(stack.at_engine(r) for r in during), [
        (round(r.sent_at - killed_at, 3), round(r.took_s, 3), r.api_base) for r in rs]
    dead = [a for a in stack.attempts()
            if not a["ok"] and stack.at_engine(a["api_base"] or "") and a["t"] >= killed_at]
    assert len(dead) <= 1, dead
    after = [r for r in rs if r.sent_at >= up_at + RETURN_WITHIN_S]
    assert after and all(stack.at_engine(r) for r in after), [
        (round(r.sent_at - up_at, 3), r.api_base) for r in after]
    back = min(r.sent_at for r in rs if r.sent_at >= up_at and stack.at_engine(r))
    print(json.dumps({"dead_port_attempts": len(dead), "requests": len(rs),
                      "reentry_after_up_s": round(back - up_at, 3)}))


def test_not_pulled_and_rate_limited_go_down_the_chain_fast(stack: Stack) -> None:
    h = stack.harness
    h.wait_backend("ollama", lambda b: NOT_PULLED in b.get("unavailable_models", {}), 10,
                   "the unpulled model reported")
    stack.cloud.rate_limited = True
    try:
        h.wait_backend("ollama-cloud", lambda b: b["state"] == "rate_limited", 10,
                       "the cloud rate-limited")
        chats_before = stack.cloud.chats
        results = [stack.ask(NOT_PULLED) for _ in range(5)] + [stack.ask(CLOUD_NAME) for _ in range(5)]
    finally:
        stack.cloud.rate_limited = False
    assert all(r.status == 200 for r in results), [r.error for r in results]
    local = stack.ollama.base_url
    assert all(r.api_base.rstrip("/") == local for r in results), [r.api_base for r in results]
    assert max(r.took_s for r in results) < FAST_S, [round(r.took_s, 3) for r in results]
    assert stack.cloud.chats == chats_before  # never sent to the rate-limited cloud
    print(json.dumps({"chain_latency_max_s": round(max(r.took_s for r in results), 3),
                      "chain_latency_p50_s": round(sorted(r.took_s for r in results)[5], 3)}))


class OpenLoop:
    """Requests for one name at a fixed rate, each on its own worker, whatever the earlier ones
    are doing: a request stuck at a hung engine never holds back the next one."""

    def __init__(self, stack: Stack, model: str, gap_s: float = 0.05, workers: int = 96) -> None:
        self.stack, self.model, self.gap_s = stack, model, gap_s
        self.futures: list[Future[Result]] = []
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="open-loop")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.futures.append(self._pool.submit(self.stack.ask, self.model))
            next_at += self.gap_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> OpenLoop:
        self._thread.start()
        return self

    def stop(self) -> list[Result]:
        """Stop sending; every request's result once all have come back."""
        self._stop.set()
        self._thread.join(10)
        self._pool.shutdown(wait=True)
        return [f.result() for f in self.futures]

    def __exit__(self, *exc: object) -> None:
        self.stop()


def test_a_hung_engine_is_skipped_within_1_5_s_with_the_default_health_settings(
    stack: Stack,
) -> None:
    """SIGSTOP the engine's process group (the port stays open, nothing answers) for a few
    seconds while requests arrive every 50 ms. Where each request was served (the
    ``x-litellm-model-api-base`` header) says whether the router sent it to the engine; the
    ones sent to the hung engine are answered by it after SIGCONT."""
    h = stack.harness
    pid = int(h.wait_up(ENGINE)["pid"])
    assert h.backend(ENGINE).get("suspect") is not True
    with OpenLoop(stack, VLLM_NAME) as traffic:
        wait_for(lambda: len(traffic.futures) >= 10, 10, "traffic before the hang")
        os.killpg(pid, signal.SIGSTOP)
        hung_at = time.monotonic()
        try:
            suspect = h.wait_backend(ENGINE, lambda b: b.get("suspect") or not b["available"],
                                     HUNG_FOR_S, "the hung engine suspect or down")
            suspect_s = time.monotonic() - hung_at
            time.sleep(max(0.0, hung_at + HUNG_FOR_S - time.monotonic()))
        finally:
            os.killpg(pid, signal.SIGCONT)
            cont_at = time.monotonic()
        h.wait_up(ENGINE, 15)
        wait_for(lambda: h.backend(ENGINE).get("suspect") is not True, 15, "the engine not suspect")
        resumed_at = time.monotonic()
        time.sleep(RETURN_WITHIN_S + 0.5)  # traffic back at the engine
        results = traffic.stop()
    failures = [r for r in results if r.status != 200]
    assert not failures, [(r.status, r.error) for r in failures]
    hung = [r for r in results if hung_at <= r.sent_at < cont_at]
    at_engine = [r for r in hung if stack.at_engine(r)]
    elsewhere = [r for r in hung if not stack.at_engine(r)]
    # When the router itself started each call to the engine (the counter's start time): a
    # request sent just before SIGCONT may be picked just after it, when the engine is up again.
    started = sorted(a["started"] - hung_at for a in stack.attempts()
                     if stack.at_engine(a["api_base"] or "") and a["started"] is not None
                     and hung_at <= a["started"] < cont_at)
    skip_within_s = max(SKIP_HUNG_WITHIN_S, suspect_s + ROUTER_REACTION_S)
    late = [t for t in started if t > skip_within_s]
    measured = {
        "suspect_or_down_after_s": round(suspect_s, 3),
        "first_seen": "suspect" if suspect.get("available") else suspect["state"],
        "last_sent_to_hung_engine_after_s": round(max(started, default=0.0), 3),
        "last_sent_to_hung_engine_client_side_s": round(
            max((r.sent_at - hung_at for r in at_engine), default=0.0), 3),
        "requests_to_hung_engine": len(started),
        "requests_to_hung_engine_after_1_5_s": len(late),
        "requests_down_the_chain": len(elsewhere),
        "stuck_s_max": round(max((r.took_s for r in at_engine), default=0.0), 3),
    }
    print(json.dumps(measured))
    assert elsewhere, "nothing went down the chain while the engine was hung"
    assert not late, (
        f"{len(late)} request(s) sent to the hung engine more than {skip_within_s:.2f} s after "
        f"the hang (at {[round(t, 2) for t in late]} s): {measured}")
    back = [r for r in results if r.sent_at >= resumed_at + RETURN_WITHIN_S]
    assert back and all(stack.at_engine(r) for r in back), [r.api_base for r in back]


def _swap(stack: Stack, old: str, new: str) -> subprocess.CompletedProcess[str]:
    h = stack.harness
    return subprocess.run(
        [sys.executable, "-m", "gpumgr.cli", "swap", old, new, "--config-dir", str(h.config_dir)],
        env=h.env, capture_output=True, text=True, timeout=120,
    )


def test_during_a_swap_neither_name_sees_a_failure(stack: Stack) -> None:
    """``gpumgr swap qwen-7b qwen-14b`` (one port, break before make) and back, with requests
    for both router names sent all along: each is served, by the engine that serves its name
    or down its chain, and afterwards each name is where the swap put it. (The card is 24 GiB:
    see ``CARD_MIB`` for what goes wrong on 16 GiB.)"""
    h = stack.harness
    h.wait_up(ENGINE)
    outcomes: dict[str, Any] = {}
    with Traffic(stack, VLLM_NAME) as t7, Traffic(stack, "qwen-coder-14b-vllm") as t14:
        wait_for(lambda: len(t7.results) >= 3 and len(t14.results) >= 3, 20, "traffic")
        for old, new in ((ENGINE, "qwen-14b"), ("qwen-14b", ENGINE)):
            started = time.monotonic()
            done = _swap(stack, old, new)
            assert done.returncode == 0, done.stdout + done.stderr
            h.wait_up(new, 30)
            settled = time.monotonic()
            wait_for(lambda: sum(r.sent_at > settled + 0.5 for r in t7.results) >= 3
                     and sum(r.sent_at > settled + 0.5 for r in t14.results) >= 3,
                     20, "traffic after the swap")
            serving = t14 if new == "qwen-14b" else t7
            after = [r for r in serving.results if r.sent_at > settled + 0.5]
            assert all(stack.at_engine(r) for r in after), [r.api_base for r in after]
            if new == "qwen-14b":  # the 7B's name goes down its chain (the 14B's comes to the 7B)
                away = [r for r in t7.results if r.sent_at > settled + 0.5]
                assert not any(stack.at_engine(r) for r in away), [r.api_base for r in away]
            outcomes[f"{old}->{new}"] = {"swap_s": round(settled - started, 3)}
    rs = t7.results + t14.results
    failures = [(r.status, r.error) for r in rs if r.status != 200]
    print(json.dumps({"requests": len(rs), "failures": len(failures),
                      "slowest_s": round(max(r.took_s for r in rs), 3), **outcomes}))
    assert not failures, failures


def test_with_the_daemon_killed_the_proxy_fails_open(stack: Stack) -> None:
    """The last word of the daemon says the engine is down; the daemon dies; the engine
    recovers. After the stated max age the router uses the engine again, failing nothing."""
    h = stack.harness
    pid = int(h.wait_up(ENGINE)["pid"])
    os.kill(pid, signal.SIGSTOP)  # hung: probes time out, the daemon calls it down
    try:
        h.wait_backend(ENGINE, lambda b: not b["available"], 10, "the hung engine down")
        assert h.proc is not None
        h.proc.kill()
        h.proc.wait()
        dead_at = time.monotonic()
        os.kill(pid, signal.SIGCONT)
        with Traffic(stack, VLLM_NAME, gap_s=0.1) as traffic:
            wait_for(lambda: any(stack.at_engine(r) for r in traffic.results), 5.0 + 10,
                     "the engine used again with the daemon gone")
        back = min(r.sent_at for r in traffic.results if stack.at_engine(r)) - dead_at
    finally:
        os.kill(pid, signal.SIGCONT)
    failures = [r for r in traffic.results if r.status != 200]
    assert not failures, [(r.status, r.error) for r in failures]
    # not before the status is stale (max age 5 s), soon after (a loaded proxy gets 4 s)
    assert 3.0 < back < 5.0 + 4.0, back
    print(json.dumps({"fail_open_after_s": round(back, 3)}))
