"""End to end with a real Prometheus (the Debian ``prometheus`` server) scraping a simulated daemon.

The test writes a prometheus.yml the way docs/monitoring.md tells the owner to: one job scraping
gpumgr's own ``/metrics`` and one ``http_sd_configs`` job fed by ``/v1/prometheus/targets``, the
shipped rules, short scrape/evaluation/refresh intervals. It then pins that: the target set
follows a swap within one refresh (plus Prometheus's own 5 s discovery throttle); a clean swap
fires no alert; a spilled Ollama is ``degraded`` with its CPU share; after an engine's SIGKILL the
shipped "down while desired" alert goes pending, and a test-only copy of that rule (the same
expression, ``for: 3s`` instead of ``1m``, since waiting a real minute would only slow the suite;
``promtool test rules`` pins the 1 m timing) goes pending and then fires; and every query of the
shipped Grafana dashboard returns data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from gpumgr.sim.harness import (
    FAST_HEALTH_YAML,
    DaemonHarness,
    create_sim_gpu,
    free_port,
    wait_for,
)
from gpumgr.sim.gpu import SimGpuSpec, SimGpuState, sim_uuid
from gpumgr.sim.ollama_process import start_sim_ollama

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="the prometheus server is not installed (Debian: apt-get install prometheus; "
           "scripts/test.sh does it when run as root)")]

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "prometheus" / "gpumgr-rules.yml"
DASHBOARD = ROOT / "config" / "grafana" / "gpumgr-dashboard.json"
QWEN_7B = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
QWEN_14B = "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"
REFRESH_S = 1.0
DISCOVERY_THROTTLE_S = 5.0
"""Prometheus's discovery manager hands target updates to the scrape manager at most this often."""
SETTINGS = FAST_HEALTH_YAML.format(restart_after_s=60) + """
vllm:
  stop_timeout_s: 2
  start_timeout_s: 60
  memory_release_timeout_s: 5
  drain_timeout_s: 5
restart:
  backoff_base_s: 10
  backoff_cap_s: 10
  max_crashes: 50
simulate:
  load_seconds: 0.3
"""
"""A crash waits 10 s before its restart: long enough for a 3 s ``for:`` to fire and be seen
(scrape 1 s + evaluation 1 s + 3 s + evaluation 1 s: ~6 s, which a 6 s backoff left no room
for on a loaded machine)."""

GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "1s"}


def _vllm(name: str, port: int, repo: str, served: str, status: str, sleep: bool = False) -> str:
    return f"""
  {name}:
    type: vllm
    base_url: http://127.0.0.1:{port}
    status: {status}
    enable_sleep_mode: {str(sleep).lower()}
    max_model_len: 8192
    max_num_seqs: 4
    models:
      - name: {served}
        hf_repo: {repo}
"""


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, Grafana's variables filled in."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


class Prometheus:
    def __init__(self, tmp: Path, daemon_address: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        shipped = yaml.safe_load(RULES.read_text())
        down = next(r for r in shipped["groups"][0]["rules"]
                    if r.get("alert") == "GpumgrBackendDownWhileDesired")
        fast = {**down, "alert": "GpumgrBackendDownWhileDesiredFast", "for": "3s"}
        test_rules = tmp / "test-only-rules.yml"
        test_rules.write_text(yaml.safe_dump({"groups": [{"name": "test-only", "rules": [fast]}]}))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "900ms"},
            "rule_files": [str(RULES), str(test_rules)],
            "scrape_configs": [
                {"job_name": "gpumgr", "static_configs": [{"targets": [daemon_address]}]},
                {"job_name": "gpumgr-engines", "http_sd_configs": [{
                    "url": f"http://{daemon_address}/v1/prometheus/targets",
                    "refresh_interval": f"{REFRESH_S:g}s"}]},
            ],
        }
        self.config_path = tmp / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._ready, 30, "prometheus ready", poll_s=0.2)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx2.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def api(self, path: str, **params: str) -> Any:
        r = httpx2.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def engine_targets(self) -> list[dict[str, Any]]:
        return [t for t in self.api("targets")["activeTargets"]
                if t["labels"].get("job") == "gpumgr-engines"]

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _backends(targets: list[dict[str, Any]]) -> set[str]:
    return {t["labels"].get("gpumgr_backend", "") for t in targets}


def test_prometheus_follows_swaps_alerts_on_a_death_only_and_every_dashboard_query_has_data(
    tmp_path: Path,
) -> None:
    create_sim_gpu(tmp_path)
    # Ollama on a card of its own (8 GiB) with a 12 GiB model: it spills a third to the CPU.
    ollama_card = tmp_path / "ollama-card.json"
    SimGpuState(ollama_card).ensure([SimGpuSpec(index=0, uuid=sim_uuid(1), memory_total_mib=8192)])
    ollama = start_sim_ollama(["big:latest"], loaded=["big:latest"], sizes_mib={"big:latest": 12000},
                              env={**os.environ, "GPUMGR_SIM_GPU_STATE": str(ollama_card)})
    port = free_port()
    providers = ("providers:" + _vllm("qwen-7b", port, QWEN_7B, "qwen-coder", "active", sleep=True)
                 + _vllm("qwen-14b", port, QWEN_14B, "qwen-coder-14b", "standby")
                 + f"\n  ollama:\n    type: ollama\n    base_url: {ollama.base_url}\n"
                   "    models: [big:latest]\n")
    daemon = DaemonHarness(tmp_path, providers, SETTINGS)
    prom: Prometheus | None = None
    try:
        daemon.start()
        daemon.wait_up("qwen-7b", 60)
        # the spilled Ollama serves, slower than planned: degraded, the CPU share in the reason
        ollama_status = daemon.wait_backend("ollama", lambda b: b["state"] == "degraded", 30)
        assert "spilling to CPU: big:latest 34 % on CPU" in ollama_status["detail"]
        assert daemon.status()["models"]["big:latest"]["available"] is False
        prom = Prometheus(tmp_path, daemon.base_url.removeprefix("http://"))
        p = prom
        wait_for(lambda: _backends(p.engine_targets()) == {"qwen-7b", "ollama"}, 15, "first targets")
        vllm_target = next(t for t in p.engine_targets()
                           if t["labels"]["gpumgr_backend"] == "qwen-7b")
        assert vllm_target["labels"]["model_name"] == "qwen-coder"
        assert vllm_target["labels"]["provider_type"] == "vllm"
        wait_for(lambda: any(t["health"] == "up" for t in p.engine_targets()
                             if t["labels"]["gpumgr_backend"] == "qwen-7b"), 15, "engine scraped")
        # vLLM's own metrics now carry gpumgr's labels
        assert p.api("query", query='up{job="gpumgr-engines",gpumgr_backend="qwen-7b"}')["result"]

        # -- a clean swap: the target set follows within one refresh, no alert fires ---------
        firing_seen: list[dict[str, Any]] = []
        for old, new, served in (("qwen-7b", "qwen-14b", "qwen-coder-14b"),
                                 ("qwen-14b", "qwen-7b", "qwen-coder")):
            swap = daemon.cli_popen("swap", old, new)
            while swap.poll() is None:
                firing_seen += [a for a in p.alerts() if a["state"] == "firing"]
                time.sleep(0.2)
            assert swap.returncode == 0, swap.stderr.read() if swap.stderr else ""
            done_at = time.monotonic()
            # what the next refresh reads is already the new set when the swap returns
            listed = daemon.get("/v1/prometheus/targets").json()
            assert [g["labels"]["gpumgr_backend"] for g in listed] == [new, "ollama"]
            wait_for(lambda: _backends(p.engine_targets()) == {new, "ollama"}, 30, f"{new} target")
            # one refresh, plus Prometheus's own discovery throttle (its discovery manager
            # passes updates on at most every 5 s), plus slack for a loaded 2-core machine
            assert time.monotonic() - done_at <= REFRESH_S + DISCOVERY_THROTTLE_S + 5.0
            target = next(t for t in p.engine_targets() if t["labels"]["gpumgr_backend"] == new)
            assert target["labels"]["model_name"] == served
            daemon.wait_up(new, 30)
            for _ in range(4):  # a few evaluations after the swap
                firing_seen += [a for a in p.alerts() if a["state"] == "firing"]
                time.sleep(0.5)
        assert firing_seen == [], firing_seen
        assert not [a for a in p.alerts()
                    if a["labels"]["alertname"].startswith("GpumgrBackendDownWhileDesired")]
        assert p.api("query", query='gpumgr_swaps_total{outcome="ok"}')["result"][0]["value"][1] == "2"

        # -- a sleep and a wake: the wake's duration is a series of its own --------------------
        for verb in ("sleep", "wake"):
            done = daemon.cli(verb, "qwen-7b")
            assert done.returncode == 0, done.stderr
        daemon.wait_up("qwen-7b", 30)
        wait_for(lambda: p.api("query", query="gpumgr_backend_wake_seconds_count")["result"],
                 15, "the wake scraped")

        # -- an engine SIGKILLed: pending, then (the 3 s test copy) firing ------------------
        pid = daemon.backend("qwen-7b")["pid"]
        os.kill(pid, signal.SIGKILL)

        def alert_state(name: str) -> str | None:
            return next((a["state"] for a in p.alerts() if a["labels"]["alertname"] == name
                         and a["labels"].get("backend") == "qwen-7b"), None)

        wait_for(lambda: alert_state("GpumgrBackendDownWhileDesired") == "pending", 10,
                 "shipped rule pending")
        wait_for(lambda: alert_state("GpumgrBackendDownWhileDesiredFast") == "firing", 10,
                 "test-only 3 s rule firing")
        daemon.wait_up("qwen-7b", 30)
        wait_for(lambda: alert_state("GpumgrBackendDownWhileDesired") is None, 10,
                 "alert resolved once the engine serves again")

        # -- the dashboard: every query returns data ------------------------------------------
        wait_for(lambda: p.api("query", query="gpumgr_failure_detection_seconds_count")["result"],
                 10, "the death scraped")
        def empty() -> list[tuple[str, str]]:
            return [(title, expr) for title, expr in dashboard_queries()
                    if not p.api("query", query=expr)["result"]]

        # the restarted engine's series come back with the next scrapes (a series that went
        # away in a scrape is stale until one shows it again)
        wait_for(lambda: not empty(), 20, "every dashboard query answered")
        assert empty() == []
        ratio = p.api("query", query='gpumgr_ollama_model_cpu_ratio{model="big:latest"}')["result"]
        assert 0.2 < float(ratio[0]["value"][1]) < 0.5  # ~ (12000 - 7892) / 12000
        assert daemon.stop() == 0
    finally:
        if prom is not None:
            prom.stop()
        daemon.cleanup()
        ollama.stop()
