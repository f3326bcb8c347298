"""The LiteLLM side of gpumgr: a router callback that skips backends gpumgr calls out.

Wire it into a LiteLLM proxy config with one line::

    litellm_settings:
      callbacks: [gpumgr.integrations.litellm.status_filter]

``status_filter`` is the module-level instance LiteLLM imports (``module.instance``); it reads
``GPUMGR_STATUS_URL`` (see ``settings``) and starts following the daemon(s) on the proxy's event
loop. Nothing heavy is imported: not the daemon's models, not FastAPI — a parser of its own
(``status_view``), the matching rules (``matching``) and an HTTP follower (``follower``).
See docs/litellm.md.
"""

from __future__ import annotations

from gpumgr.integrations.litellm.callback import GpumgrStatusFilter
from gpumgr.integrations.litellm.settings import FilterSettings

status_filter = GpumgrStatusFilter.from_env()

__all__ = ["FilterSettings", "GpumgrStatusFilter", "status_filter"]
