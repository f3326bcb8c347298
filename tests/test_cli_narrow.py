"""Every table of the CLI at 80 and 120 columns with a 40-character provider name: no line is
wider than the screen, and each row shows the name and its state (or its slice) whole."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from gpumgr.cli.doctor import render_report
from gpumgr.cli.gpus import render_inventory
from gpumgr.cli.status import render_table
from gpumgr.cli.tables import output_width
from gpumgr.doctor import Report, fail, ok, warn
from gpumgr.gpu import MIB, GpuInfo, GpuInventory, GpuProcess
from tests.test_cli_status_table import DOC

LONG = "qwen25-coder-7b-instruct-awq-on-the-rtx5"
assert len(LONG) == 40
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "config"


def _render(renderable: object, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def assert_rows_whole(out: str, width: int, pairs: list[tuple[str, str]]) -> None:
    """No line wider than ``width``; each (name, state) on one line, both whole."""
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width, out
    for name, state in pairs:
        assert any(name in line and re.search(rf"(^|\s){re.escape(state)}(\s|$)", line)
                   for line in lines), (name, state, out)


def _long_doc() -> dict[str, object]:
    doc = copy.deepcopy(DOC)
    doc["backends"][1]["name"] = LONG  # type: ignore[index]
    doc["backends"][3]["name"] = "ollama-cloud-" + "x" * 27  # type: ignore[index]
    return doc


@pytest.mark.parametrize("width", [80, 120])
def test_status_keeps_every_name_and_state_whole_and_every_word_of_the_detail(width: int) -> None:
    doc = _long_doc()
    out = _render(render_table(doc, width), width)
    backends = doc["backends"]  # type: ignore[index]
    assert_rows_whole(out, width, [(b["name"], b["state"]) for b in backends])
    flat = re.sub(r"\s+", "", out)
    for b in backends:
        for word in re.findall(r"[A-Za-z0-9.:%()]+", b["detail"]):
            assert word in flat, (word, out)


def test_status_chooses_its_layout_by_width() -> None:
    doc = _long_doc()
    narrow, medium, wide = (_render(render_table(doc, w), w) for w in (80, 120, 200))
    assert "detail" not in narrow.splitlines()[2]  # 80: the detail under each row
    assert "detail" in medium and "pid" in medium and "models" not in medium
    for column in ("type", "models", "port", "util", "restarts", "detail"):
        assert column in wide


@pytest.mark.parametrize("width", [80, 120])
def test_doctor_keeps_the_status_and_the_check_name_whole(width: int) -> None:
    report = Report((
        ok("gpu.driver", "driver 580.65, CUDA 13.0"),
        fail(f"port.{LONG}", f"port 8001 of {LONG} is held by pid 4242 (python3, not gpumgr)",
             "stop that process, or move the provider to a free port in providers.yaml"),
        warn(f"provider.{LONG}.weights", "weights not downloaded yet (4.2 GiB)",
             f"gpumgr pull {LONG}"),
    ), duration_s=0.4)
    out = _render_with(render_report, report, width)
    assert_rows_whole(out, width, [(c.name, c.level.value) for c in report.checks])
    assert "providers.yaml" in out and "4242" in out


def _render_with(render: object, value: object, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    render(value, console)  # type: ignore[operator]
    return console.export_text()


@pytest.mark.parametrize("width", [80, 120])
def test_gpus_keeps_the_card_name_the_pid_and_the_owner_whole(width: int) -> None:
    gpu = GpuInfo(index=0, uuid="GPU-6a1e2b3c-1111-2222-3333-444455556666", name="Quadro RTX 5000",
                  memory_total_bytes=16384 * MIB, memory_used_bytes=14563 * MIB,
                  memory_free_bytes=1821 * MIB, temperature_c=61, utilization_pct=97,
                  processes=(GpuProcess(pid=19437, used_bytes=14263 * MIB,
                                        name="python3 -m vllm.entrypoints.openai.api_server",
                                        owner=LONG),))
    out = _render_with(render_inventory, GpuInventory(backend="simulated", gpus=(gpu,)), width)
    assert_rows_whole(out, width, [("Quadro RTX 5000", "16384"), ("19437", LONG)])


@pytest.mark.parametrize("width", [80, 120])
def test_plan_through_the_cli_honours_columns_when_piped_and_keeps_the_name_and_slice(
    tmp_path: Path, width: int,
) -> None:
    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, cfg)
    for name in ("providers.yaml", "model-mappings.yaml"):
        path = cfg / name
        path.write_text(path.read_text().replace("qwen-7b", LONG))
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": str(width),
           "GPUMGR_SIM_GPU_STATE": str(tmp_path / "gpu.json"),
           **{f"GPUMGR_{d}_DIR": str(tmp_path / d.lower()) for d in ("RUNTIME", "STATE", "LOG", "CACHE")}}
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "gpumgr.cli", "plan", "--simulate", "--config-dir", str(cfg), LONG],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fraction = re.search(r"\b0\.\d\d\b", proc.stdout)
    assert fraction is not None, proc.stdout
    assert_rows_whole(proc.stdout, width, [(LONG, fraction.group(0))])


def test_output_width_off_a_terminal_is_columns_else_120_and_on_a_terminal_the_terminal() -> None:
    assert output_width(False, {"COLUMNS": "80"}) == 80
    assert output_width(False, {"COLUMNS": "junk"}) == 120
    assert output_width(False, {}) == 120
    assert output_width(True, {"COLUMNS": "80"}) is None
