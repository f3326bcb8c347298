"""``gpumgr status --watch`` into a pipe, and the exit codes of the first hour, against a real
daemon on the simulated card: each change arrives on the pipe while it happens (not at exit),
``--json --watch`` is one status document per line, SIGTERM ends it with 0 and no traceback;
``swap X X`` is invalid input (2), ``logs`` of a backend gpumgr does not run is one line (2)
and of an engine that has not run yet one line (1)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumgr.sim.harness import FAST_HEALTH_YAML, FAST_LIFECYCLE_YAML, DaemonHarness, free_port

pytestmark = pytest.mark.slow

LONG = "qwen25-coder-7b-instruct-awq-on-the-rtx5"
"""A 40-character provider name: whole on each row of an 80-column status."""
QWEN_7B = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
QWEN_14B = "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"


def _providers(port: int) -> str:
    return f"""providers:
  {LONG}:
    type: vllm
    base_url: http://127.0.0.1:{port}
    status: active
    max_model_len: 4096
    max_num_seqs: 4
    models:
      - name: qwen-coder
        hf_repo: {QWEN_7B}
  qwen-14b:
    type: vllm
    base_url: http://127.0.0.1:{port}
    status: standby
    max_model_len: 4096
    max_num_seqs: 4
    models:
      - name: qwen-coder-14b
        hf_repo: {QWEN_14B}
  ollama:
    type: ollama
    base_url: http://127.0.0.1:{free_port()}
    status: active
    models: [qwen2.5-coder:7b]
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonHarness]:
    d = DaemonHarness(tmp_path, _providers(free_port()),
                      FAST_HEALTH_YAML.format(restart_after_s=60) + FAST_LIFECYCLE_YAML)
    try:
        d.start()
        # the daemon listens on a port the kernel chose: the CLI's `status` asks there
        d.env["GPUMGR_LISTEN"] = d.base_url.removeprefix("http://")
        d.wait_up(LONG, 60)
        yield d
    finally:
        d.cleanup()


class LineReader:
    """Reads a child's stdout pipe line by line in a thread, each line with its arrival time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._run, args=(proc.stdout,), daemon=True).start()

    def _run(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def until(self, predicate: object, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                _, line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no matching line in {timeout_s} s; got:\n"
                                     + "\n".join(self.seen)) from None
            self.seen.append(line)
            if predicate(line):  # type: ignore[operator]
                return line


def _terminate(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=15)
    assert proc.stderr is not None
    return rc, proc.stderr.read()


def test_status_watch_into_a_pipe_prints_each_change_while_it_happens_and_ends_on_sigterm(
    daemon: DaemonHarness,
) -> None:
    daemon.env["COLUMNS"] = "80"
    watch = daemon.cli_popen("status", "--watch")
    try:
        out = LineReader(watch)
        out.until(lambda line: line.startswith(LONG) and " up " in f" {line} ")  # the table
        assert all(len(line) <= 80 for line in out.seen), out.seen
        stop = daemon.cli_popen("stop", LONG)
        out.until(lambda line: f"{LONG}: up -> draining" in line)
        stopped = out.until(lambda line: f"{LONG}: stopping -> stopped" in line)
        assert watch.poll() is None, "the line came at exit, not as it happened"
        assert stop.wait(timeout=60) == 0
        assert stopped.split(" ")[0].count(":") == 2  # HH:MM:SS first
        rc, err = _terminate(watch)
        assert rc == 0, err
        assert "Traceback" not in err
    finally:
        if watch.poll() is None:
            watch.kill()


def test_status_json_watch_is_one_status_document_per_line_per_change(
    daemon: DaemonHarness,
) -> None:
    watch = daemon.cli_popen("status", "--json", "--watch")
    try:
        out = LineReader(watch)
        first = json.loads(out.until(lambda line: True, timeout_s=60))  # a CLI start, loaded
        assert {b["name"] for b in first["backends"]} == {LONG, "qwen-14b", "ollama"}
        assert daemon.cli("stop", LONG).returncode == 0
        docs = [first]

        def stopped(line: str) -> bool:
            doc = json.loads(line)  # every line is a whole document
            docs.append(doc)
            return any(b["name"] == LONG and b["state"] == "stopped" for b in doc["backends"])

        out.until(stopped)
        states = [next(b["state"] for b in d["backends"] if b["name"] == LONG) for d in docs]
        assert states[0] == "up" and states[-1] == "stopped"
        assert "draining" in states and "stopping" in states, states  # no change folded away
        assert all(len(d["backends"]) == 3 for d in docs)
        assert docs[-1]["models"]["qwen-coder"]["available"] is False  # rebuilt with the change
        seqs = [d["seq"] for d in docs]
        assert seqs == sorted(seqs) and len(set(seqs)) > 2, seqs
        rc, err = _terminate(watch)
        assert rc == 0 and "Traceback" not in err, err
    finally:
        if watch.poll() is None:
            watch.kill()


def test_swap_of_a_provider_with_itself_is_invalid_input(daemon: DaemonHarness) -> None:
    same = daemon.cli("swap", LONG, LONG)
    assert same.returncode == 2, same.stderr
    assert same.stderr.count("\n") == 1 and "same" in same.stderr
    alias = daemon.cli("swap", "qwen-coder", LONG)  # a served name and its provider
    assert alias.returncode == 2, alias.stderr
    assert alias.stderr.count("\n") == 1 and f"both name {LONG}" in alias.stderr
    assert daemon.backend(LONG)["state"] == "up"  # nothing disturbed


def test_logs_of_a_backend_gpumgr_does_not_run_or_has_not_run_yet_say_so_in_one_line(
    daemon: DaemonHarness,
) -> None:
    ollama = daemon.cli("logs", "ollama")
    assert ollama.returncode == 2, ollama.stderr
    assert ollama.stderr.count("\n") == 1 and "not run by gpumgr" in ollama.stderr
    assert ollama.stdout == ""
    never = daemon.cli("logs", "qwen-14b")
    assert never.returncode == 1, never.stderr
    assert never.stderr.count("\n") == 1 and "qwen-14b has no log yet" in never.stderr
    assert daemon.cli("logs", LONG, "-n", "3").returncode == 0
