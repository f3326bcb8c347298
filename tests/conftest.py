"""Shared fixtures: repository paths and a copy of the example configuration."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO_ROOT / "config"


def reference_dir() -> Path:
    """``../shared/reference`` next to the repository (CI lays shared/ beside the clone)."""
    for candidate in (REPO_ROOT.parent / "shared" / "reference", Path("/work/shared/reference")):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("shared/reference not found beside the repository")


@pytest.fixture
def example_config(tmp_path: Path) -> Path:
    """A private copy of config/ that a test may edit."""
    dest = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, dest)
    return dest


@pytest.fixture(autouse=True)
def _fresh_structlog() -> object:
    """A CLI invoked in-process configures structlog (level filter included); undo it per test."""
    import structlog

    yield
    structlog.reset_defaults()
