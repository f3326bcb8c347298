#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv from pyproject.toml. Needs only Python >= 3.11.
# Sourced by the other scripts; prints where the venv is. Re-installs when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GPUMGR_VENV:-$ROOT/.venv}"
PY=""
for candidate in python3.11 python3.12 python3.13 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    PY="$candidate"; break
  fi
done
[ -n "$PY" ] || { echo "gpumgr needs Python >= 3.11 (none found on PATH)" >&2; exit 1; }
# $1: the extras to install ("test" when absent; "" installs only the runtime dependencies).
EXTRAS="${1-test}"
stamp="$VENV/.gpumgr-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)-$EXTRAS"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv in $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing gpumgr and its dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  if [ -n "$EXTRAS" ]; then spec="$ROOT[$EXTRAS]"; else spec="$ROOT"; fi
  "$VENV/bin/python" -m pip install --quiet -e "$spec" >&2
  echo "$want" > "$stamp"
fi
