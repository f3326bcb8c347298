"""Secret values and their redaction: the one place that knows how a secret is masked.

Probe errors are free text from other programs (an HTTP client's exception, a server's error
body) and may echo a request header or URL back; logs and CLI errors may carry a library's
message. Every such string passes through ``redact``/``redactor_for``: each known secret value
(the API keys named by providers' ``env_var``, the hub token) is replaced wherever it occurs, and
so is any run of 8 or more of its characters (a key an upstream cut in its error body).
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

FRAGMENT_CHARS = 8
"""A run of this many characters of a secret, anywhere in a text, is masked (a prefix, suffix or
middle that an upstream cut out of a key); shorter runs only at a text's very start or end."""

Redactor = Callable[[str], str]


def redactor_for(secrets: Iterable[str]) -> Redactor:
    """A function that replaces each of ``secrets`` (longest first) with ``***``, and any run of
    ``FRAGMENT_CHARS`` or more characters of one (its prefix, suffix or middle) too.

    Redact first, then shorten: a cut through a secret leaves a fragment no whole-value pattern
    matches. But text that someone else already cut (an upstream echoing 24 of a key's 35
    characters in its error body) carries such a fragment, so every window of ``FRAGMENT_CHARS``
    characters of every secret is precomputed into one set: a text position where a window of
    the text is in that set starts a fragment, which grows while the next window is in the set
    too, and the whole run becomes ``***``. Only runs of 8 or more characters that occur in some
    secret can hold a fragment: one character-class regex finds those runs (in C), and only
    their windows are looked up in the set, so ordinary text costs one scan. As a last line of defence, text that ends with the start of a
    secret, or begins with its end, has that fragment masked when it is ``MIN_SECRET_CHARS`` or
    longer.
    """
    values = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
    if not values:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(v) for v in values))
    windows = {v[i:i + FRAGMENT_CHARS] for v in values
               for i in range(len(v) - FRAGMENT_CHARS + 1)}
    alphabet = "".join(sorted({c for w in windows for c in w}))
    runs = (re.compile("[%s]{%d,}" % (_charset(alphabet), FRAGMENT_CHARS))
            if windows else None)

    def fragments(text: str) -> str:
        if runs is None or runs.search(text) is None:
            return text
        out: list[str] = []
        at = 0
        for run in runs.finditer(text):
            i, stop = run.start(), run.end() - FRAGMENT_CHARS + 1
            while i < stop:
                if text[i:i + FRAGMENT_CHARS] not in windows:
                    i += 1
                    continue
                end = i + FRAGMENT_CHARS
                while end < run.end() and text[end - FRAGMENT_CHARS + 1:end + 1] in windows:
                    end += 1
                out.append(text[at:i])
                out.append(REDACTED)
                at = i = end
        if not out:
            return text
        out.append(text[at:])
        return "".join(out)

    edge_lengths = range(FRAGMENT_CHARS - 1, MIN_SECRET_CHARS - 1, -1)
    heads = {n: {v[:n] for v in values if n < len(v)} for n in edge_lengths}
    tails = {n: {v[-n:] for v in values if n < len(v)} for n in edge_lengths}

    # quick rejection: the last (first) MIN_SECRET_CHARS characters of every head (tail)
    head_ends = {h[-MIN_SECRET_CHARS:] for hs in heads.values() for h in hs}
    tail_starts = {t[:MIN_SECRET_CHARS] for ts in tails.values() for t in ts}

    def apply(text: str) -> str:
        out = fragments(pattern.sub(REDACTED, text))
        if out[-MIN_SECRET_CHARS:] in head_ends:
            for n in edge_lengths:
                if len(out) >= n and out[-n:] in heads[n]:
                    out = out[:-n] + REDACTED
                    break
        if out[:MIN_SECRET_CHARS] in tail_starts:
            for n in edge_lengths:
                if len(out) >= n and out[:n] in tails[n]:
                    out = REDACTED + out[n:]
                    break
        return out

    return apply


def _charset(chars: str) -> str:
    """``chars`` as the inside of a regex character class."""
    return "".join("\\" + c if c in "\\]^-[" else c for c in chars)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***`` (a one-off ``redactor_for``)."""
    return redactor_for(secrets)(text)


def provider_secrets(providers: Iterable[Provider], environ: Mapping[str, str]) -> list[str]:
    """The values of every provider's ``env_var`` present in ``environ`` or as a systemd
    credential (``gpumgr.secrets``)."""
    found = (read_secret(p.env_var, environ) for p in providers)
    return [value for value in found if value]
