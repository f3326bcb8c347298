"""Secret values by name: the environment first, then systemd credentials. The one reader.

A secret is named by an environment variable (a provider's ``env_var``, ``HF_TOKEN``, the
control token). Under systemd it may instead arrive as a credential: the unit says
``LoadCredential=HF_TOKEN:/etc/gpumgr/credentials/HF_TOKEN`` and systemd exposes the file as
``$CREDENTIALS_DIRECTORY/HF_TOKEN`` (readable only by the service; never in the environment,
``/proc/<pid>/environ`` or ``systemctl show``). The credential's name is the variable's name, or
``gpumgr_<NAME>`` for a file of the directory that gpumgr's unit loads whole
(``LoadCredential=gpumgr:/etc/gpumgr/credentials``: systemd names each file ``gpumgr_<file>``).

Precedence: a non-empty ``$NAME`` > ``$CREDENTIALS_DIRECTORY/NAME``. The file's first line,
stripped, is the value; an empty or unreadable file counts as absent (``secret_source`` says
why, for ``gpumgr doctor``). Values are never logged here; callers register them for redaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


@dataclass(frozen=True)
class Secret:
    """A secret's value and where it came from (the source is safe to show, the value is not)."""

    value: str = field(repr=False)
    source: str
    """``$NAME`` or ``credential NAME``."""

    def __str__(self) -> str:
        return f"secret from {self.source}"


CREDENTIAL_PREFIX = "gpumgr_"


def credential_path(name: str, env: Mapping[str, str]) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/<name>`` (else ``gpumgr_<name>``) when systemd passed
    credentials and one of them exists, else None."""
    directory = env.get(CREDENTIALS_ENV, "").strip()
    if not directory or not name or "/" in name or name in (".", ".."):
        return None
    base = Path(directory.split(":")[0])
    for candidate in (base / name, base / f"{CREDENTIAL_PREFIX}{name}"):
        if candidate.is_file():
            return candidate
    return None


def _read_credential(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    lines = text.strip().splitlines()
    return lines[0].strip() if lines and lines[0].strip() else None


def read_secret_with_source(name: str | None, env: Mapping[str, str]) -> Secret | None:
    """The secret called ``name`` and its source, or None when neither place has it."""
    if not name:
        return None
    value = env.get(name, "").strip()
    if value:
        return Secret(value, f"${name}")
    path = credential_path(name, env)
    if path is not None:
        cred = _read_credential(path)
        if cred:
            return Secret(cred, f"credential {name}")
    return None


def read_secret(name: str | None, env: Mapping[str, str]) -> str | None:
    """The value of the secret called ``name`` (``$NAME``, else the systemd credential), or None."""
    found = read_secret_with_source(name, env)
    return found.value if found else None


__all__ = ["CREDENTIALS_ENV", "Secret", "credential_path", "read_secret", "read_secret_with_source"]
