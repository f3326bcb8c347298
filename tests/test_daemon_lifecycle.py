"""``gpumgr daemon --simulate`` as a real process: start, adoption after SIGKILL, clean SIGTERM.

The daemon runs with the simulated GPU, engine and hub, temporary directories and run-time
ports; every engine and daemon is killed in a ``finally`` whatever the outcome.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psutil
import pytest

from gpumgr.sim.harness import alive, assert_clean_daemon_log, free_port, wait_for
from gpumgr.sim.gpu import SimGpuState

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO_ROOT / "config"
WAIT_S = 60.0
"""How long a wait here may take: engines load on a loaded 2-core CI machine too."""


def healthy(port: int) -> bool:
    try:
        # asserted once, not polled: a loaded machine's answer may take over a second
        return httpx2.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    except httpx2.HTTPError:
        return False


PROVIDERS = """
providers:
  qwen-7b:
    type: vllm
    base_url: http://127.0.0.1:{p1}
    status: active
    max_model_len: 4096
    max_num_seqs: 4
    models:
      - name: qwen-coder-vllm
        hf_repo: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
  deepseek-6.7b:
    type: vllm
    base_url: http://127.0.0.1:{p2}
    status: active
    max_model_len: 2048
    max_num_seqs: 2
    models:
      - name: deepseek-coder-6.7b-vllm
        hf_repo: TheBloke/deepseek-coder-6.7B-instruct-AWQ
  qwen-14b:
    type: vllm
    base_url: http://127.0.0.1:{p1}
    status: standby
    models:
      - name: qwen-coder-14b-vllm
        hf_repo: Qwen/Qwen2.5-Coder-14B-Instruct-AWQ
"""
SETTINGS = """
vllm:
  stop_timeout_s: 5
  start_timeout_s: 60
restart:
  backoff_base_s: 0.2
  backoff_cap_s: 1
simulate:
  load_seconds: 0.3
"""


class DaemonRun:
    """Directories and environment of one test; starts daemons and remembers them for cleanup."""

    def __init__(self, tmp: Path, config_dir: Path) -> None:
        self.tmp = tmp
        self.config_dir = config_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMGR_")}
        for name in ("runtime", "state", "log", "cache"):
            self.env[f"GPUMGR_{name.upper()}_DIR"] = str(tmp / name)
        self.env["GPUMGR_LISTEN"] = "127.0.0.1:0"
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.tmp / f"daemon-{len(self.daemons)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gpumgr.cli", "daemon", "--simulate",
                 "--config-dir", str(self.config_dir)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.daemons.append(proc)
        self.logs.append(log)
        return proc

    def events(self, index: int) -> list[dict[str, object]]:
        out = []
        for line in self.logs[index].read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def records(self) -> dict[str, dict[str, object]]:
        path = self.tmp / "state" / "children.json"
        if not path.exists():
            return {}
        return {c["backend"]: c for c in json.loads(path.read_text())["children"]}

    def sim_gpu(self) -> SimGpuState:
        return SimGpuState(self.tmp / "runtime" / "sim-gpu.json")

    def cleanup(self) -> None:
        pids = [int(r["pid"]) for r in self.records().values()]  # type: ignore[call-overload]
        for d in self.daemons:
            if d.poll() is None:
                d.kill()
                d.wait()
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for log in self.logs:
            assert_clean_daemon_log(log.read_text(errors="replace"), log.name)


@pytest.fixture
def two_engines(tmp_path: Path) -> Iterator[tuple[DaemonRun, int, int]]:
    cfg = tmp_path / "config"
    cfg.mkdir()
    p1, p2 = free_port(), free_port()
    (cfg / "providers.yaml").write_text(PROVIDERS.format(p1=p1, p2=p2))
    (cfg / "gpumgr.yaml").write_text(SETTINGS)
    run = DaemonRun(tmp_path, cfg)
    try:
        yield run, p1, p2
    finally:
        run.cleanup()


@pytest.mark.slow
def test_a_new_daemon_adopts_both_engines_after_sigkill_without_restarting_them(
    two_engines: tuple[DaemonRun, int, int],
) -> None:
    run, p1, p2 = two_engines
    first = run.start()
    wait_for(lambda: healthy(p1) and healthy(p2), WAIT_S, "both engines healthy")
    before = {name: r["pid"] for name, r in run.records().items()}
    assert set(before) == {"qwen-7b", "deepseek-6.7b"}

    first.send_signal(signal.SIGKILL)
    first.wait()
    assert healthy(p1) and healthy(p2)  # a daemon crash does not take the models down

    second = run.start()
    wait_for(
        lambda: sum(1 for e in run.events(1) if e.get("kind") == "ChildReady") == 2,
        WAIT_S, "the second daemon to see both engines ready",
    )
    events = run.events(1)
    ready = [e for e in events if e.get("kind") == "ChildReady"]
    assert all(e["adopted"] for e in ready)
    assert {e["backend"]: e["pid"] for e in ready} == before
    assert not [e for e in events if e.get("event") == "supervisor.spawn"]  # no restart
    assert {name: r["pid"] for name, r in run.records().items()} == before
    time.sleep(0.5)  # stay a moment: they must keep serving under the new daemon
    assert healthy(p1) and healthy(p2)
    assert all(alive(int(pid)) for pid in before.values())  # type: ignore[call-overload]

    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=20) == 0
    assert not any(alive(int(pid)) for pid in before.values())  # type: ignore[call-overload]
    assert run.sim_gpu().read().allocations == ()
    assert run.records() == {}


@pytest.mark.slow
def test_after_a_driver_upgrade_breaks_nvml_serving_engines_are_adopted_not_lost(
    two_engines: tuple[DaemonRun, int, int],
) -> None:
    """The daemon restarts and NVML no longer answers (driver/library mismatch): engines that
    are serving keep serving and stay ``up``; only new starts are impossible."""
    from gpumgr.gpu.nvml import NvmlBackend

    if NvmlBackend().read().available:
        pytest.skip("this machine has a GPU")
    run, p1, p2 = two_engines
    first = run.start()
    wait_for(lambda: healthy(p1) and healthy(p2), WAIT_S, "both engines healthy")
    before = {name: r["pid"] for name, r in run.records().items()}
    first.send_signal(signal.SIGKILL)
    first.wait()

    status_port = free_port()
    run.env["GPUMGR_LISTEN"] = f"127.0.0.1:{status_port}"
    log = run.tmp / "daemon-nogpu.log"
    with open(log, "wb") as out:  # no --simulate: the real NVML path, which has no driver here
        second = subprocess.Popen(
            [sys.executable, "-m", "gpumgr.cli", "daemon", "--config-dir", str(run.config_dir)],
            env=run.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    run.daemons.append(second)

    def both_up() -> bool:
        try:
            doc = httpx2.get(f"http://127.0.0.1:{status_port}/v1/status", timeout=1).json()
        except httpx2.HTTPError:
            return False
        states = {b["name"]: (b["state"], b["pid"]) for b in doc["backends"]}
        return states.get("qwen-7b") == ("up", before["qwen-7b"]) and states.get(
            "deepseek-6.7b") == ("up", before["deepseek-6.7b"])

    wait_for(both_up, WAIT_S, "both adopted engines up under a daemon without NVML")
    assert '"event": "gpu.unavailable"' in log.read_text()
    assert not [line for line in log.read_text().splitlines() if "supervisor.spawn" in line]
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0


@pytest.mark.slow
def test_a_dead_recorded_child_is_restarted_and_a_foreign_port_holder_left_alone(
    two_engines: tuple[DaemonRun, int, int],
) -> None:
    run, p1, p2 = two_engines
    first = run.start()
    wait_for(lambda: healthy(p1) and healthy(p2), WAIT_S, "both engines healthy")
    old = {name: int(r["pid"]) for name, r in run.records().items()}  # type: ignore[call-overload]
    first.send_signal(signal.SIGKILL)
    first.wait()
    for pid in old.values():  # both engines die while no daemon watches
        os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in old.values()), WAIT_S, "engines gone")
    squatter = subprocess.Popen(
        [sys.executable, "-c",
         f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{p2})); s.listen(); "
         "print('ok', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == b"ok"
        second = run.start()
        wait_for(lambda: healthy(p1), WAIT_S, "qwen-7b restarted")
        new_pid = int(run.records()["qwen-7b"]["pid"])  # type: ignore[call-overload]
        assert new_pid != old["qwen-7b"]
        message = f"port {p2} is held by pid {squatter.pid} (not started by gpumgr)"
        wait_for(
            lambda: any(e.get("detail") == message for e in run.events(1)),
            WAIT_S, "the foreign listener reported",
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
        assert squatter.poll() is None  # never signalled
        assert not alive(new_pid)
    finally:
        squatter.kill()
        squatter.wait()


@pytest.mark.slow
def test_the_example_configuration_runs_out_of_the_box_and_stops_clean_on_sigterm(
    tmp_path: Path,
) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8001))
        except OSError:
            pytest.skip("port 8001 of the example configuration is in use on this machine")
    run = DaemonRun(tmp_path, EXAMPLE_CONFIG)
    run.env["GPUMGR_SIM_LOAD_SECONDS"] = "0.3"
    try:
        daemon = run.start()
        wait_for(lambda: healthy(8001), WAIT_S, "qwen-7b of the example config healthy")
        pid = int(run.records()["qwen-7b"]["pid"])  # type: ignore[call-overload]
        cmd = psutil.Process(pid).cmdline()
        fraction = float(cmd[cmd.index("--gpu-memory-utilization") + 1])
        assert 0 < fraction < 1
        snap = run.sim_gpu().read()
        assert [a.pid for a in snap.allocations] == [pid]
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
        assert not alive(pid)
        assert run.sim_gpu().read().allocations == ()
    finally:
        run.cleanup()


def test_without_a_gpu_the_daemon_keeps_publishing_and_fails_only_the_vllm_backends(
    tmp_path: Path,
) -> None:
    """No driver (or a driver/library mismatch): the router still needs Ollama's and the
    cloud's status, so the daemon stays up; each vLLM backend is failed with the reason."""
    from gpumgr.gpu.nvml import NvmlBackend

    if NvmlBackend().read().available:
        pytest.skip("this machine has a GPU")
    run = DaemonRun(tmp_path, EXAMPLE_CONFIG)
    port = free_port()
    run.env["GPUMGR_LISTEN"] = f"127.0.0.1:{port}"
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpumgr.cli", "daemon", "--config-dir", str(EXAMPLE_CONFIG)],
            env=run.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        def qwen_failed() -> bool:
            try:
                doc = httpx2.get(f"http://127.0.0.1:{port}/v1/status", timeout=1).json()
            except httpx2.HTTPError:
                return False
            b = {x["name"]: x for x in doc["backends"]}["qwen-7b"]
            return b["state"] == "failed" and b["detail"].startswith("GPU unavailable")

        wait_for(qwen_failed, WAIT_S, "qwen-7b failed with the GPU's reason")
        doc = httpx2.get(f"http://127.0.0.1:{port}/v1/status", timeout=5).json()
        assert doc["gpus"] == []
        assert {x["name"]: x["state"] for x in doc["backends"]}["ollama"] in ("unknown", "down", "up")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert '"event": "gpu.unavailable"' in text and "Traceback" not in text
    assert not (tmp_path / "state" / "children.json").exists()
