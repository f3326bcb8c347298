"""``python -m gpumgr.cli`` runs the CLI (the console script ``gpumgr`` does the same)."""

from gpumgr.cli import run

run()
