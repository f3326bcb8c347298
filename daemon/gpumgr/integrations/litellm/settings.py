"""The callback's settings, read from the environment once (here, nowhere else).

``GPUMGR_STATUS_URL``       one or several comma-separated ``/v1/status`` URLs, one per GPU host
                            (default ``http://127.0.0.1:9400/v1/status``)
``GPUMGR_STATUS_MAX_AGE_S`` how long a status stays usable without word from its daemon
                            (default 5; older: filter nothing for that host)
``GPUMGR_STATUS_POLL_S``    the polling interval when the event stream is unavailable (default 1)
``GPUMGR_HOLD_S``           hold a request up to this long for a group's only local deployment
                            that is loading with ``eta_s`` at most this (default 0: off; at
                            most 60)
``GPUMGR_DEMAND_REPORTS``   ``0`` stops reporting missed requests to the demand policy
                            (default on; docs/policies.md)
``GPUMGR_CONTROL_TOKEN``    sent with the demand reports when the daemon has a control token
                            (without one, the daemon takes them from loopback only)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_STATUS_URL = "http://127.0.0.1:9400/v1/status"
DEFAULT_MAX_AGE_S = 5.0
DEFAULT_POLL_S = 1.0
MAX_HOLD_S = 60.0


@dataclass(frozen=True, slots=True)
class FilterSettings:
    status_urls: tuple[str, ...] = (DEFAULT_STATUS_URL,)
    max_age_s: float = DEFAULT_MAX_AGE_S
    poll_s: float = DEFAULT_POLL_S
    hold_s: float = 0.0
    report_demand: bool = True
    control_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FilterSettings:
        urls = tuple(u.strip() for u in env.get("GPUMGR_STATUS_URL", "").split(",") if u.strip())
        return cls(
            status_urls=urls or (DEFAULT_STATUS_URL,),
            max_age_s=_positive(env, "GPUMGR_STATUS_MAX_AGE_S", DEFAULT_MAX_AGE_S),
            poll_s=_positive(env, "GPUMGR_STATUS_POLL_S", DEFAULT_POLL_S),
            hold_s=min(MAX_HOLD_S, _positive(env, "GPUMGR_HOLD_S", 0.0)),
            report_demand=env.get("GPUMGR_DEMAND_REPORTS", "1").strip().lower()
            not in ("0", "false", "no", "off"),
            control_token=env.get("GPUMGR_CONTROL_TOKEN", "").strip() or None,
        )


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number from ``env``; a bad value falls back to the default (a router must
    start even with a typo in a tuning variable)."""
    try:
        value = float(env[name])
    except (KeyError, ValueError):
        return default
    return value if value > 0 else default
