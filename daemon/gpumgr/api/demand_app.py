"""``POST /v1/demand``: the LiteLLM callback's counts of requests it could not send to a local
model that is swappable but not resident (docs/policies.md, the demand policy).

It sits on the status listener, which is otherwise read-only, because the router that reports
runs beside it; so it is narrow on purpose:

- counts only (``{"counts": {"qwen-14b": 3}}``): at most ``MAX_NAMES`` names of at most 64
  characters, each count 0..``MAX_COUNT``, the body at most ``MAX_BODY_BYTES`` (refused on its
  headers, before it is read, by ``ControlGuard``);
- from a loopback client, or with the control token when one is set (then from anywhere that
  carries it, and never without it); on the unix socket the socket's permissions decide;
- a name counts at most once a second (``PolicyRunner.report``), so a flood adds nothing.

Its worst effect is a swap the demand policy would allow anyway: the policy's own rules
(residency, hysteresis, the hourly cap, pins) decide, never the report.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gpumgr.api.control_guard import ControlGuard

MAX_BODY_BYTES = 8192
MAX_NAMES = 64
MAX_COUNT = 10_000
PATH = "/v1/demand"

Name = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class DemandBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    counts: dict[Name, Annotated[int, Field(ge=0, le=MAX_COUNT)]] = Field(max_length=MAX_NAMES)


class DemandAnswer(BaseModel):
    accepted: dict[str, int]
    ignored: dict[str, str]


def _loopback(host: str | None) -> bool:
    if not host:
        return True  # a unix socket: its mode (0660) already said who may connect
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_demand_route(app: FastAPI, report: Callable[[Mapping[str, int]], dict[str, Any]], *,
                     token: str | None) -> None:
    """Add ``POST /v1/demand`` to ``app``; with ``token`` every call must carry it."""
    app.add_middleware(ControlGuard, token=token, max_body=MAX_BODY_BYTES, prefix=PATH)

    @app.post(PATH, response_model=DemandAnswer, summary="Report requests a router could not "
              "send to a swappable local model (the demand policy's input)")
    async def post_demand(body: DemandBody, request: Request) -> dict[str, Any]:
        client = request.client.host if request.client is not None else None
        if token is None and not _loopback(client):
            raise HTTPException(403, "demand reports come from loopback, or carry the control token")
        return report(body.counts)
