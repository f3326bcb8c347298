"""A provider's ``env:`` never holds a secret: names that look like one, values that are one.

``env:`` is part of the launch identity and is written in plain text in ``providers.yaml``, the
logs and the records; secrets belong in ``env_var`` (the name of a variable) or a systemd
credential. Two checks:

- ``secret_looking_name``: the name has the shape of a secret variable. The name is cut into
  words at ``_`` and at letter/digit boundaries (``PASSWORD1`` → ``PASSWORD``, ``1``). A word
  that is (or ends with) ``SECRET``, ``PASSWORD``, ``PASSWD`` or ``PASSPHRASE`` anywhere is a
  secret (``DBPASSWORD_FILE``, ``MY_SECRET_X``). The last word (digits aside) is a secret when
  it is, or ends with, ``TOKEN``, ``APIKEY``, ``CREDENTIAL(S)``, ``AUTH``, ``BEARER``, ``PWD``,
  or is ``KEY``, ``PASS``, ``CRED(S)``, or ends with ``KEY`` after a word that qualifies a key
  (``ACCESSKEY``, ``MYKEY``). Not secrets: ``TOKEN`` or ``KEY`` before other words
  (``GPUMGR_SIM_TOKEN_DELAY_S``, ``SSL_KEY_FILE``), text tokens (``MAX_NUM_BATCHED_TOKENS``,
  ``TOKENIZERS_PARALLELISM``), words that merely contain one (``KEYBOARD``, ``MONKEY``,
  ``AUTHOR``, ``SECRETARY``), and the shell's ``PWD`` / ``OLDPWD``.
- ``check_env_values``: a value equal to a known secret — the value of any provider's
  ``env_var`` (environment or systemd credential) or the control token — is refused whatever
  its name. The message names the file, line and key, never the value.

Pure except ``known_secrets``, which reads the environment and credentials.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from gpumgr.errors import ConfigIssue
from gpumgr.secrets import read_secret

if TYPE_CHECKING:  # registry imports this module (its env: validator)
    from gpumgr.config.registry import ProvidersFile
    from gpumgr.config.settings import Settings
    from gpumgr.config.source import YamlSource

_WORDS = re.compile(r"[A-Z]+|[0-9]+")
ANYWHERE = ("SECRET", "PASSWORD", "PASSWD", "PASSPHRASE")
LAST_SUFFIX = ("TOKEN", "APIKEY", "CREDENTIAL", "CREDENTIALS", "AUTH", "BEARER", "PWD",
               *ANYWHERE)
LAST_EXACT = frozenset({"KEY", "PASS", "CRED", "CREDS", "SECRETS", "PASSWORDS"})
KEY_QUALIFIERS = ("API", "ACCESS", "SECRET", "PRIVATE", "MASTER", "SIGNING", "SIGN", "AUTH",
                  "ENCRYPTION", "ENC", "SESSION", "SERVICE", "CLIENT", "HMAC", "LICENSE", "MY",
                  "SSH", "GPG", "JWT", "ADMIN", "ROOT", "USER", "APP", "DEPLOY", "WEBHOOK")
"""A word ending with ``KEY`` is a secret only after one of these (``ACCESSKEY``, not
``MONKEY`` or ``HOTKEY``)."""
SHELL_DIRS = frozenset({"PWD", "OLDPWD"})


def secret_looking_name(name: str) -> bool:
    """True when an ``env:`` name has the shape of a variable holding a secret."""
    upper = name.upper()
    if upper in SHELL_DIRS:
        return False
    words = _WORDS.findall(upper)
    if any(w.endswith(ANYWHERE) for w in words):
        return True
    letters = [w for w in words if not w.isdigit()]
    if not letters:
        return False
    last = letters[-1]
    if last in LAST_EXACT or last.endswith(LAST_SUFFIX):
        return True
    if last.endswith("KEY"):
        head = last[: -len("KEY")]
        return head.endswith(KEY_QUALIFIERS) or (
            len(letters) > 1 and letters[-2] in KEY_QUALIFIERS and head == "")
    return False


def known_secrets(pf: ProvidersFile, settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    """Secret value → what it is ("the value of CLOUD_KEY", "the control token")."""
    found: dict[str, str] = {}
    for p in pf.providers.values():
        value = read_secret(p.env_var, env) if p.env_var else None
        if value:
            found.setdefault(value, f"the value of {p.env_var} (env_var of {p.name})")
    token = read_secret("GPUMGR_CONTROL_TOKEN", env)
    if settings.control.token_file:
        try:
            token = Path(settings.control.token_file).read_text(encoding="utf-8").strip() \
                .splitlines()[0].strip() or token
        except (OSError, IndexError, UnicodeDecodeError):
            pass  # the daemon reports an unreadable token file itself
    if token:
        found.setdefault(token, "the control token")
    return {v: why for v, why in found.items() if len(v) >= 4}


def check_env_values(pf: ProvidersFile, src: YamlSource,
                     secrets: Mapping[str, str]) -> list[ConfigIssue]:
    """Every ``env:`` value equal to a known secret, located at its key."""
    issues: list[ConfigIssue] = []
    if not secrets:
        return issues
    for name, p in pf.providers.items():
        for key, value in p.env.items():
            what = secrets.get(value)
            if what is not None:
                issues.append(src.issue(
                    ("providers", name, "env", key),
                    f"env {key} holds a secret ({what}): secrets never live in providers.yaml "
                    "(name the variable in env_var, or use a systemd credential)"))
    return issues
