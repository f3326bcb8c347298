#!/usr/bin/env python3
"""Regenerate the key tables of ``docs/configuration.md`` from gpumgr's configuration models.

Usage: ``.venv/bin/python scripts/gen_config_docs.py``. ``tests/test_config_docs.py`` fails
when the page is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from gpumgr.config.keydoc import render_page  # noqa: E402

PAGE = ROOT / "docs" / "configuration.md"

if __name__ == "__main__":
    PAGE.write_text(render_page(PAGE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
