#!/usr/bin/env bash
# Run the test suite (creates the virtualenv first). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" test,litellm
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
