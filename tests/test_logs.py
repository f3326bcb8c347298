"""Logs are JSON events for journald, and secrets never reach them."""

from __future__ import annotations

import io
import json

import structlog

from gpumgr.logs import configure_logging, register_secret


def test_json_lines_mask_secret_fields_and_registered_secret_values_anywhere() -> None:
    out = io.StringIO()
    configure_logging("info", json_lines=True, stream=out)
    register_secret("sk-live-0123456789")
    log = structlog.get_logger("t")
    log.info("cloud.probe", backend="ollama-cloud", api_key="sk-live-0123456789",
             detail="401 for Bearer sk-live-0123456789", headers={"Authorization": "Bearer x"})
    event = json.loads(out.getvalue().splitlines()[-1])
    assert event["event"] == "cloud.probe" and event["backend"] == "ollama-cloud"
    assert event["api_key"] == "***"
    assert event["detail"] == "401 for Bearer ***"
    assert event["headers"] == {"Authorization": "***"}
    assert "sk-live-0123456789" not in out.getvalue()


def test_debug_events_are_filtered_at_info_level() -> None:
    out = io.StringIO()
    configure_logging("info", json_lines=True, stream=out)
    structlog.get_logger("t").debug("noise")
    assert out.getvalue() == ""
