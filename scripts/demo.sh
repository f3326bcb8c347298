#!/usr/bin/env bash
# The main job on a machine without a GPU: validate the example configuration, then run the
# daemon on the simulated GPU so that models come up and their status can be watched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" test
cd "$ROOT"
exec "$ROOT/.venv/bin/gpumgr" demo "$@"
