"""What the callback does when gpumgr empties a model group: an error LiteLLM does not retry.

LiteLLM 1.108.7's router, given an empty list by ``async_filter_deployments``, raises its own
"no deployments available" error (``RouterRateLimitError``, status 429) and then *retries* the
group ``num_retries`` times with back-off (``retry_after``, doubling): with ``num_retries: 3``
that is ~30 s per request before the fallbacks are tried, although gpumgr knows the backend is
stopped. Its rules give an exception a say: ``async_function_with_retries`` takes the retry
count from the exception's own ``num_retries`` when the request did not set one
(``deployment_num_retries``), and only an operator's ``retry_policy`` entry for that class (or
a per-request ``num_retries``) overrides it. So the hook raises

    ``litellm.ServiceUnavailableError`` (503, an ``openai.APIError``) with ``num_retries=0``

which LiteLLM

- does not retry (0 retries; a ``retry_policy.ServiceUnavailableErrorRetries`` the operator
  wrote still wins: their rule, not ours),
- hands to the fallbacks at once (not a ``BadRequestError``, so ``fallbacks`` and
  ``default_fallbacks`` apply; an ``openai.APIError``, so the weighted-failover step treats it as
  a model failure rather than a bug),
- never counts against a deployment (no deployment was called: ``allowed_fails`` and cooldown
  see nothing),
- and answers 503 with gpumgr's reason when the group has no fallbacks, instead of a 429 "no
  deployments" after the back-off.

Only raised when gpumgr's status emptied a non-empty list (``OUT`` verdicts); an internal
surprise in the filter still returns the list unfiltered (fail open), and without LiteLLM the
hook returns the empty list as before.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from gpumgr.integrations.litellm.matching import Located

PROVIDER = "gpumgr"


def reason(model: str, located: Sequence[Located | None]) -> str:
    """``gpumgr: no backend of 'm' is available (vllm-qwen: stopped); trying its fallbacks``."""
    parts = sorted({f"{loc.backend.name}: {loc.backend.state}" for loc in located if loc})
    why = f" ({', '.join(parts)})" if parts else ""
    return f"gpumgr: no backend of '{model}' is available now{why}; trying its fallbacks"


def group_unavailable(model: str, located: Sequence[Located | None]) -> Exception | None:
    """The exception to raise for an emptied group, or None outside a LiteLLM proxy."""
    try:
        exceptions = importlib.import_module("litellm.exceptions")
    except ImportError:
        return None
    error: Any = exceptions.ServiceUnavailableError(
        message=reason(model, located), llm_provider=PROVIDER, model=model, num_retries=0,
    )
    return error if isinstance(error, Exception) else None
