"""The policy runner's view of a backend, into its status entry (``idle_action_in_s`` and the
``policy`` object; times there are epoch seconds, in the document RFC 3339 UTC)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gpumgr.status.document import PolicyStatus
from gpumgr.status.publisher import StatusPublisher

_TIMES = ("decided_at", "next_swap_at")


def publish_policy(publisher: StatusPublisher, name: str, idle_in_s: float | None,
                   fields: dict[str, Any]) -> None:
    """Set ``name``'s policy fields (nothing for a backend the document does not list)."""
    if publisher.backend(name) is None:
        return
    data = dict(fields)
    for key in _TIMES:
        if isinstance(data.get(key), (int, float)):
            data[key] = datetime.fromtimestamp(data[key], UTC)
    publisher.update_backend(name, idle_action_in_s=idle_in_s,
                             policy=PolicyStatus.model_validate(data))
