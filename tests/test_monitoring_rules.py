"""The shipped alert rules: valid for Prometheus, and their timing pinned by ``promtool test rules``
(tests/prometheus/gpumgr-rules.test.yml: a clean swap fires nothing, a death fires after 1 m, a
failed backend, a crash loop, a rolled-back swap, gpumgr unreachable, a stale status, VRAM off
plan, Ollama spilling to CPU)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "prometheus" / "gpumgr-rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "gpumgr-rules.test.yml"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian: apt-get install prometheus; scripts/test.sh does "
           "it when run as root)",
)


def test_shipped_rules_pass_promtool_check() -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_rule_unit_tests_pass_promtool_test() -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], capture_output=True,
                          text=True, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_a_rule_that_alerted_during_a_swap_would_fail_the_unit_tests(tmp_path: Path) -> None:
    """The clean-swap scenario has teeth: without ``starting`` among the states on the way to
    serving, the 2-minute start of the swapped-in model fires ``GpumgrBackendDownWhileDesired``."""
    assert PROMTOOL is not None
    rules_dir = tmp_path / "config" / "prometheus"
    rules_dir.mkdir(parents=True)
    text = RULES.read_text()
    assert "up|degraded|starting|" in text
    (rules_dir / RULES.name).write_text(text.replace("up|degraded|starting|", "up|degraded|"))
    tests_dir = tmp_path / "tests" / "prometheus"
    tests_dir.mkdir(parents=True)
    shutil.copy(RULE_TESTS, tests_dir / RULE_TESTS.name)
    done = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], capture_output=True,
                          text=True, cwd=tests_dir)
    assert done.returncode != 0
    assert "GpumgrBackendDownWhileDesired" in done.stdout + done.stderr
