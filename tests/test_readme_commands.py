"""The README's command table lists every command the CLI has (a new user reads it first)."""

from __future__ import annotations

import re

from conftest import REPO_ROOT

from gpumgr.cli import main


def test_every_command_is_in_the_readme_table() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    listed: set[str] = set()
    for row in re.findall(r"^\| `gpumgr ([^`]+)`", readme, flags=re.MULTILINE):
        first = row.split()[0]
        listed.update(first.replace("\\", "").split("|"))
    missing = sorted(set(main.commands) - listed)
    assert not missing, f"commands missing from the README's table: {missing}"
    assert not sorted(listed - set(main.commands)), "the README lists a command the CLI lacks"
