"""structlog, configured once: JSON lines for journald, colour for a person, secrets redacted.

Events are a small, stable vocabulary (``backend.state``, ``weights.download``, ``child.exit``);
values are fields. A processor masks every field whose name says secret (``token``, ``api_key``,
``authorization`` …) and every registered secret value wherever it appears in a string, so a key
that leaked into an error message from a library still never reaches the log.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from gpumgr.redaction import MIN_SECRET_CHARS, REDACTED, Redactor, redactor_for

_SECRET_KEY = re.compile(r"(token|secret|password|passwd|api_key|apikey|authorization|bearer)", re.I)
_secret_values: set[str] = set()
_redactor: Redactor | None = None
"""``redactor_for(_secret_values)``, built once per change of the set (it precomputes every
8-character window of every secret), not once per string."""


def register_secret(value: str | None) -> None:
    """Remember a secret's value so that it (or any 8-character run of it) is masked wherever
    it appears in a log event."""
    global _redactor
    if value and len(value) >= MIN_SECRET_CHARS and value not in _secret_values:
        _secret_values.add(value)
        _redactor = None


def redact_text(text: str) -> str:
    """``text`` with every registered secret masked (CLI errors, log fields)."""
    global _redactor
    if _redactor is None:
        _redactor = redactor_for(_secret_values)
    return _redactor(text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if _SECRET_KEY.search(key) and event[key] is not None:
            event[key] = REDACTED
        else:
            event[key] = _redact_value(event[key])
    return event


def configure_logging(level: str = "info", *, json_lines: bool | None = None, stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger once (safe to call again: it replaces)."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=True)
    )
    lvl = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # before redaction: tracebacks carry text too
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=stream, force=True)
    # APScheduler warns in plain text whenever a probe run is skipped because the previous one
    # is still waiting on a hung server; the health state machine already says so, as JSON.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
