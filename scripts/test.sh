#!/usr/bin/env bash
# Run the test suite (creates the virtualenv first). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" test
# The LiteLLM proxy of tests/test_litellm_proxy.py runs from its own venv, as a router does:
# litellm 1.108.7 pins huggingface_hub < 2, which gpumgr's own venv must not get.
GPUMGR_VENV="$ROOT/.venv-litellm" bash "$ROOT/scripts/bootstrap.sh" litellm
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
