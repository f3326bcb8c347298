"""The hub's environment, read once here: token, endpoint, offline switch.

Token precedence: ``$HF_TOKEN`` > the systemd credential ``HF_TOKEN`` (``gpumgr.secrets``) > the file named by ``$HF_TOKEN_PATH`` > ``hub.token_file`` in
gpumgr.yaml. huggingface_hub's own implicit lookup (``~/.cache/huggingface/token``) is never
used: gpumgr runs as a service and must only send what its operator configured. The token value
lives in ``HubToken.value`` only; ``repr``, logs and error messages show its source, never it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gpumgr.config.settings import HubSettings
from gpumgr.logs import register_secret
from gpumgr.errors import WeightsInputError
from gpumgr.secrets import read_secret_with_source

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_ENV = "HF_TOKEN"
TOKEN_PATH_ENV = "HF_TOKEN_PATH"
OFFLINE_ENV = "HF_HUB_OFFLINE"
ENDPOINT_ENV = "HF_ENDPOINT"
TOKEN_HINT = f"set {TOKEN_ENV} (or {TOKEN_PATH_ENV}, or hub.token_file in gpumgr.yaml)"

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class HubToken:
    """A hub token and where it came from (the source is safe to show, the value is not)."""

    value: str = field(repr=False)
    source: str

    def __str__(self) -> str:
        return f"token from {self.source}"


def _read_token_file(path: Path, source: str) -> HubToken:
    try:
        text = path.expanduser().read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise WeightsInputError(f"{source} names {path}, which does not exist") from None
    except OSError as exc:
        raise WeightsInputError(f"{source} names {path}, which cannot be read ({exc.strerror})") from None
    if not text:
        raise WeightsInputError(f"{source} names {path}, which is empty")
    return HubToken(text.splitlines()[0].strip(), f"{source} ({path})")


def resolve_token(hub: HubSettings, env: Mapping[str, str]) -> HubToken | None:
    """The token to send, or None for anonymous access."""
    secret = read_secret_with_source(TOKEN_ENV, env)  # $HF_TOKEN, else the systemd credential
    if secret is not None:
        return HubToken(secret.value, TOKEN_ENV if secret.source.startswith("$") else secret.source)
    if env.get(TOKEN_PATH_ENV, "").strip():
        return _read_token_file(Path(env[TOKEN_PATH_ENV].strip()), TOKEN_PATH_ENV)
    if hub.token_file:
        return _read_token_file(Path(hub.token_file), "hub.token_file")
    return None


def resolve_endpoint(hub: HubSettings, env: Mapping[str, str], flag: str | None = None) -> str:
    """flag > ``hub.endpoint`` in gpumgr.yaml > ``$HF_ENDPOINT`` > huggingface.co.

    The file wins over the environment here on purpose: ``HF_ENDPOINT`` is huggingface_hub's
    process-wide variable, and gpumgr's own configuration is the more specific statement.
    """
    return (flag or hub.endpoint or env.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


def offline_from_env(env: Mapping[str, str]) -> bool:
    """``HF_HUB_OFFLINE=1``: use complete local snapshots only, never open a connection."""
    return env.get(OFFLINE_ENV, "").strip().lower() in _TRUE


@dataclass(frozen=True)
class HubAccess:
    """How to reach the hub: explicit endpoint, optional token, bounded timeouts."""

    endpoint: str
    token: HubToken | None = None
    max_workers: int = 4
    timeout_s: float = 10.0

    @property
    def token_arg(self) -> str | bool:
        """What huggingface_hub's ``token=`` gets: the value, or False (never an implicit lookup)."""
        return self.token.value if self.token else False


def hub_access(hub: HubSettings, env: Mapping[str, str], *, endpoint: str | None = None) -> HubAccess:
    """Everything a download needs from settings and environment, resolved once."""
    token = resolve_token(hub, env)
    if token is not None:
        register_secret(token.value)  # masked in every log event, wherever a library echoes it
    return HubAccess(endpoint=resolve_endpoint(hub, env, endpoint), token=token,
                     max_workers=hub.max_workers, timeout_s=hub.timeout_s)
