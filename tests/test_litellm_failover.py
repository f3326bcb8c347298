"""The error the callback raises when gpumgr empties a model group (issue 17), checked against
LiteLLM 1.108.7's own rules in its own venv; outside LiteLLM the hook returns ``[]`` as before.

The end-to-end effect (the owner's config, retries and back-off as written, answered by the
fallback in well under a second) is tests/test_litellm_owner_config.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from gpumgr.integrations.litellm.failover import group_unavailable, reason
from test_litellm_filter import OLLAMA_QWEN, VLLM_7B, backends, document, make_filter

REPO_ROOT = Path(__file__).resolve().parent.parent
LITELLM_PYTHON = REPO_ROOT / ".venv-litellm" / "bin" / "python"

pytestmark = pytest.mark.anyio


def _litellm_installed_here() -> bool:
    try:
        import litellm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_litellm_installed_here(), reason="litellm installed in this venv")
async def test_outside_litellm_an_emptied_group_is_an_empty_list() -> None:
    f, _ = make_filter(document(backends(qwen_7b="stopped")))
    assert await f.async_filter_deployments("qwen-coder-vllm", [VLLM_7B], None) == []
    assert group_unavailable("qwen-coder-vllm", []) is None


async def test_a_group_with_one_backend_up_is_filtered_not_raised() -> None:
    f, _ = make_filter(document(backends(qwen_7b="stopped")))
    kept = await f.async_filter_deployments("g", [VLLM_7B, OLLAMA_QWEN], None)
    assert kept == [OLLAMA_QWEN]


async def test_an_empty_list_from_litellm_stays_empty_and_is_not_gpumgrs_to_explain() -> None:
    f, _ = make_filter(document(backends(qwen_7b="stopped")))
    assert await f.async_filter_deployments("qwen-coder-vllm", [], None) == []


async def test_an_internal_error_returns_the_deployments_unfiltered() -> None:
    f, _ = make_filter(document(backends(qwen_7b="stopped")))
    f._index = None  # type: ignore[assignment]  # any surprise inside the filter
    assert await f.async_filter_deployments("qwen-coder-vllm", [VLLM_7B], None) == [VLLM_7B]


def test_the_reason_names_the_backend_and_its_state() -> None:
    f, _ = make_filter(document(backends(qwen_7b="stopped")))
    located = [f._index.locate(VLLM_7B)[0]]
    assert reason("qwen-coder-vllm", located) == (
        "gpumgr: no backend of 'qwen-coder-vllm' is available now (qwen-7b: stopped); "
        "trying its fallbacks")


CHECK_IN_LITELLM = r"""
import asyncio, json, os, sys, openai, litellm
from litellm.router_utils.fallback_event_handlers import is_bad_request_without_fallback
from litellm.router_utils.get_retry_from_policy import get_num_retries_from_retry_policy
from gpumgr.integrations.litellm import FilterSettings, GpumgrStatusFilter
from gpumgr.integrations.litellm.status_view import parse_document

given = json.loads(sys.stdin.read())
f = GpumgrStatusFilter(FilterSettings(), clock=lambda: 1000.0, autostart=False)
f.followers[0]._set(parse_document(given["doc"].encode()))
try:
    asyncio.run(f.async_filter_deployments("qwen-coder-vllm", [given["deployment"]], None))
    raise SystemExit("no exception for an emptied group")
except litellm.ServiceUnavailableError as e:
    assert e.num_retries == 0, e.num_retries          # the router's retry count for it
    assert e.status_code == 503
    assert isinstance(e, openai.APIError)              # weighted failover: a model failure
    assert not is_bad_request_without_fallback(e, False)  # fallbacks apply
    # the operator's retry_policy still decides when it names this class
    assert get_num_retries_from_retry_policy(e, {"ServiceUnavailableErrorRetries": 2}) == 2
    assert get_num_retries_from_retry_policy(e, {"DefaultRetries": 0}) == 0
    assert "qwen-7b: stopped" in str(e)
print("ok")
"""


@pytest.mark.skipif(not LITELLM_PYTHON.exists(), reason="no .venv-litellm")
def test_inside_litellm_an_emptied_group_raises_what_the_router_sends_to_fallbacks() -> None:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "PYTHONPATH": str(REPO_ROOT / "daemon")}  # this checkout's callback
    given = json.dumps({"doc": document(backends(qwen_7b="stopped")).decode(),
                        "deployment": VLLM_7B})  # fmt: skip
    r = subprocess.run([str(LITELLM_PYTHON), "-c", CHECK_IN_LITELLM], env=env, input=given,
                       capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
