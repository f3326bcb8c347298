"""``gpumgr plan`` asks the running daemon (``GET /v1/control/plan``), else decides alone.

The daemon knows its engines: a running one that stays is planned at the slice it runs with
(pinned), so "would deepseek fit now?" is answered with qwen-7b's real slice, and the answer
says where it came from. With no daemon the CLI decides locally and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumgr.sim.harness import FAST_HEALTH_YAML, FAST_LIFECYCLE_YAML, DaemonHarness, free_port

pytestmark = pytest.mark.slow

QWEN_7B = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
DEEPSEEK = "TheBloke/deepseek-coder-6.7B-instruct-AWQ"


def _provider(name: str, port: int, repo: str, status: str) -> str:
    return f"""
  {name}:
    type: vllm
    base_url: http://127.0.0.1:{port}
    status: {status}
    max_model_len: 8192
    max_num_seqs: 4
    models:
      - name: {name}-served
        hf_repo: {repo}
"""


def test_plan_reflects_the_running_engines_then_falls_back_to_local(tmp_path: Path) -> None:
    d = DaemonHarness(
        tmp_path,
        "providers:" + _provider("qwen-7b", free_port(), QWEN_7B, "active")
        + _provider("deepseek", free_port(), DEEPSEEK, "standby"),
        FAST_HEALTH_YAML.format(restart_after_s=60) + FAST_LIFECYCLE_YAML,
    )
    try:
        d.start()
        d.wait_up("qwen-7b", 60)
        pulled = d.cli("pull", "--simulate", "deepseek")
        assert pulled.returncode == 0, pulled.stderr
        running = json.loads(
            (tmp_path / "state" / "children.json").read_text()
        )["children"][0]["fraction"]

        r = d.cli("plan", "--simulate", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert (doc["source"], doc["source_note"]) == ("daemon", "from the running daemon")
        (inst,) = doc["gpus"][0]["instances"]
        assert inst["provider"] == "qwen-7b" and inst["gpu_memory_utilization"] == running

        r = d.cli("plan", "--simulate", "--json", "deepseek")
        doc = json.loads(r.stdout)
        assert doc["source"] == "daemon"
        by_name = {i["provider"]: i for i in doc["gpus"][0]["instances"]}
        # the running qwen-7b stays, at the slice it runs with: deepseek is planned beside it
        assert by_name["qwen-7b"]["pinned"] and by_name["qwen-7b"]["gpu_memory_utilization"] == running
        assert "deepseek" in by_name
        # 0.84 of the 16 GiB card stays taken: deepseek is refused, the fix is to drop qwen-7b
        assert r.returncode == 1 and not doc["feasible"]
        assert r.stderr.startswith("error: deepseek does not fit: short by")
        assert "plan without qwen-7b" in doc["gpus"][0]["problems"][0]["fixes"]

        r = d.cli("plan", "--simulate")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[0] == "from the running daemon"
        assert d.stop() == 0

        r = d.cli("plan", "--simulate", "--json", "deepseek")
        doc = json.loads(r.stdout)
        socket = tmp_path / "runtime" / "gpumgr.sock"
        assert (doc["source"], doc["source_note"]) == ("local", f"local: no daemon at {socket}")
        assert [i["provider"] for i in doc["gpus"][0]["instances"]] == ["deepseek"]
        assert r.returncode == 0 and doc["feasible"]  # qwen-7b stopped with its daemon
        r = d.cli("plan", "--simulate", "deepseek")
        assert r.stdout.startswith("local: no daemon at ")  # the path wraps at the width
    finally:
        d.cleanup()
