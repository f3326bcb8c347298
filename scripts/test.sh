#!/usr/bin/env bash
# Run the test suite (creates the virtualenv first). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" test
# The LiteLLM proxy of tests/test_litellm_proxy.py runs from its own venv, as a router does:
# litellm 1.108.7 pins huggingface_hub < 2, which gpumgr's own venv must not get.
GPUMGR_VENV="$ROOT/.venv-litellm" bash "$ROOT/scripts/bootstrap.sh" litellm
# promtool and prometheus for the monitoring tests (Debian's package ships both); quiet and
# non-fatal: without them those tests skip and say why.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus) >/dev/null 2>&1 \
    || echo "note: could not install the prometheus package; the monitoring tests will skip" >&2
fi
cd "$ROOT"
# Three pytest-xdist workers, a test file at a time each (--dist loadfile keeps a file's shared,
# module-scoped daemon in one worker): most tests wait on real processes, so three workers overlap
# those waits even on 2 cores (measured on the 2-core machine, 1079 tests: one process ~7.5 min,
# two workers 5.8 min, three 4.5 min). GPUMGR_TEST_WORKERS=0 runs it in one process.
exec "$ROOT/.venv/bin/python" -m pytest -q -n "${GPUMGR_TEST_WORKERS:-3}" --dist loadfile "$@"
