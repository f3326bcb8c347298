"""Secret values and their redaction: the one place that knows how a secret is masked.

Probe errors are free text from other programs (an HTTP client's exception, a server's error
body) and may echo a request header or URL back; logs and CLI errors may carry a library's
message. Every such string passes through ``redact``/``redactor_for``: each known secret value
(the API keys named by providers' ``env_var``, the hub token) is replaced wherever it occurs.
Redaction always comes before any shortening (``redact_then_shorten``): a detail cut at 200
characters must never publish the first 38 characters of a key that the cut made unmatchable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from gpumgr.config.registry import Provider
from gpumgr.secrets import read_secret

REDACTED = "***"
MIN_SECRET_CHARS = 4
"""Shorter values would blank out ordinary words; such a "key" is no secret anyway."""

Redactor = Callable[[str], str]


def redactor_for(secrets: Iterable[str]) -> Redactor:
    """A function that replaces each of ``secrets`` (longest first) with ``***``.

    Redact first, then shorten: a cut through a secret leaves a fragment no pattern matches.
    As a second line of defence, text that someone else already cut (an upstream echoing the
    first N bytes of a header) and that ends with the start of a secret, or begins with its
    end, has that fragment masked too when it is ``MIN_SECRET_CHARS`` or longer.
    """
    values = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
    if not values:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(v) for v in values))

    def apply(text: str) -> str:
        out = pattern.sub(REDACTED, text)
        for v in values:
            for n in range(len(v) - 1, MIN_SECRET_CHARS - 1, -1):
                if out.endswith(v[:n]):
                    out = out[:-n] + REDACTED
                    break
            for n in range(len(v) - 1, MIN_SECRET_CHARS - 1, -1):
                if out.startswith(v[-n:]):
                    out = REDACTED + out[n:]
                    break
        return out

    return apply


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***`` (a one-off ``redactor_for``)."""
    return redactor_for(secrets)(text)


def provider_secrets(providers: Iterable[Provider], environ: Mapping[str, str]) -> list[str]:
    """The values of every provider's ``env_var`` present in ``environ`` or as a systemd
    credential (``gpumgr.secrets``)."""
    found = (read_secret(p.env_var, environ) for p in providers)
    return [value for value in found if value]
