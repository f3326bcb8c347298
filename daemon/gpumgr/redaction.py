"""Secret values and their redaction: the one place that knows how a secret is masked.

Probe errors are free text from other programs (an HTTP client's exception, a server's error
body) and may echo a request header or URL back; logs and CLI errors may carry a library's
message. Every such string passes through ``redact``/``redactor_for``: each known secret value
(the API keys named by providers' ``env_var``, the hub token) is replaced wherever it occurs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from gpumgr.config.registry import Provider

REDACTED = "***"
MIN_SECRET_CHARS = 4
"""Shorter values would blank out ordinary words; such a "key" is no secret anyway."""

Redactor = Callable[[str], str]


def redactor_for(secrets: Iterable[str]) -> Redactor:
    """A function that replaces each of ``secrets`` (longest first) with ``***``."""
    values = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
    if not values:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(v) for v in values))
    return lambda text: pattern.sub(REDACTED, text)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***`` (a one-off ``redactor_for``)."""
    return redactor_for(secrets)(text)


def provider_secrets(providers: Iterable[Provider], environ: Mapping[str, str]) -> list[str]:
    """The values of every provider's ``env_var`` present in ``environ``."""
    return [
        environ[p.env_var]
        for p in providers
        if p.env_var is not None and environ.get(p.env_var)
    ]
