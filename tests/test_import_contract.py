"""Imports run one way (issue 16): the import-linter contracts in pyproject.toml hold.

The layers are interfaces > orchestration (``actions``) > I/O > core; ``gpumgr.sim`` is imported
only by the composition root; core starts no process and talks to no driver or server. The
contracts themselves, with the known exceptions and who removes them, are in ``pyproject.toml``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_the_package_keeps_its_import_contracts() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT / "daemon"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(
        [str(lint_imports), "--no-logo", "--no-cache"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
