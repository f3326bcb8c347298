"""Typed models of the user's registry: ``providers.yaml`` and ``model-mappings.yaml``.

These files exist on the box before gpumgr does and carry many descriptive keys gpumgr does not
act on (``description``, ``features``, ``docs``, ``location``, ``metadata`` …): every model here
accepts and keeps unknown keys (``extra="allow"``). Where gpumgr acts, it is strict.

Providers and their models are frozen values: two loads of one file compare equal, and nothing
downstream can change a provider that the configuration (and a reload's diff) describes.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gpumgr.config.env_secrets import secret_looking_name
from gpumgr.config.hosts import bind_address, is_loopback

ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MANAGED_ENV = frozenset({
    "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "VLLM_NO_USAGE_STATS", "VLLM_SERVER_DEV_MODE",
    "VLLM_API_KEY", "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
})
"""Variables gpumgr sets (or withholds) itself for every engine: not for ``env:``."""
SECRET_NAME = re.compile(
    r"(^|_)(SECRET|PASSWORD|PASSWD)(_|$)|(^|_)(KEY|APIKEY|TOKEN|CREDENTIALS?)$", re.IGNORECASE
)
"""The first, narrow rule for secret names, kept for readers of it; ``env:`` is checked by
``gpumgr.config.env_secrets.secret_looking_name`` (a superset: ``MYTOKEN``, ``PASSWORD1``)."""
HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
VLLM_VERSION_PIN = re.compile(r"^\d+\.\d+(\.\d+)?$")


def served_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a served name or alias, or None.

    Served names go into vLLM's argv after ``--served-model-name`` (which takes every following
    token that is not a flag): a name starting with ``-`` would become a flag there (bypassing the
    ``extra_args`` rule), and whitespace or ``=`` would split or glue tokens in logs and routes.
    """
    if name.startswith("-"):
        return f"must not start with '-' (got {name!r}): vLLM would read it as a flag"
    if any(c.isspace() for c in name) or "=" in name:
        return f"must not contain whitespace or '=' (got {name!r})"
    return None


class ProviderType(StrEnum):
    VLLM = "vllm"
    OLLAMA = "ollama"
    OLLAMA_CLOUD = "ollama_cloud"
    LLAMA_CPP = "llama_cpp"
    OPENAI_COMPATIBLE = "openai_compatible"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    MISTRAL = "mistral"
    GROQ = "groq"
    OPENROUTER = "openrouter"
    TOGETHER = "together"
    DEEPSEEK = "deepseek"
    AZURE = "azure"
    BEDROCK = "bedrock"
    LM_STUDIO = "lm_studio"
    TGI = "tgi"


class ProviderStatus(StrEnum):
    ACTIVE = "active"
    STANDBY = "standby"
    DISABLED = "disabled"
    TEMPLATE = "template"


class ModelEntry(BaseModel):
    """One model of a provider. Plain-string entries become ``ModelEntry(name=...)``.

    ``name`` is how the registry lists the model (often the Hugging Face repo id itself);
    ``served_model_name`` is the name the vLLM server answers to, and so what the router sends,
    when it should differ from ``name``.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    served_model_name: str | None = Field(default=None, min_length=1)
    hf_repo: str | None = None
    revision: str | None = None
    quantization: str | None = None
    model_size_gb: float | None = Field(default=None, gt=0)
    context_length: int | None = Field(default=None, gt=0)
    aliases: list[str] = Field(default_factory=list)

    @field_validator("hf_repo")
    @classmethod
    def _repo_shape(cls, v: str | None) -> str | None:
        if v is not None and not HF_REPO.match(v):
            raise ValueError(f"must look like 'org/repo' (got {v!r})")
        return v

    @field_validator("served_model_name")
    @classmethod
    def _served_name_shape(cls, v: str | None) -> str | None:
        problem = served_name_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("aliases")
    @classmethod
    def _aliases_shape(cls, v: list[str]) -> list[str]:
        for i, alias in enumerate(v):
            problem = served_name_problem(alias)
            if problem:
                raise ValueError(f"alias {i} {problem}")
        return v

    @model_validator(mode="after")
    def _name_as_served_name(self) -> ModelEntry:
        """Without ``served_model_name`` the ``name`` is what the server answers to."""
        if self.served_model_name is None:
            problem = served_name_problem(self.name)
            if problem:
                raise ValueError(f"name {problem} (it is the served name: set "
                                 "served_model_name to a plain name)")
        return self

    @property
    def served_name(self) -> str:
        """The name a server of this model answers to first."""
        return self.served_model_name or self.name

    @property
    def resolved_hf_repo(self) -> str | None:
        """``hf_repo`` when given, else the name when it looks like ``org/repo``."""
        if self.hf_repo:
            return self.hf_repo
        return self.name if HF_REPO.match(self.name) else None


class IdlePolicy(BaseModel):
    """``idle:`` of a provider: what to do after ``after_s`` seconds without a request (counted
    by the engine itself: ``vllm:request_success_total`` unchanged and nothing running or
    waiting). ``action`` is ``sleep`` (vLLM sleep mode), ``stop``, or ``swap`` back to the
    provider ``swap_to`` names; ``swap_to`` alone means ``swap``. See docs/policies.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after_s: float = Field(gt=0)
    action: Literal["sleep", "stop", "swap"] | None = None
    swap_to: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _action_and_target(self) -> IdlePolicy:
        if self.action is None:
            object.__setattr__(self, "action", "swap" if self.swap_to else "stop")
        if self.action == "swap" and not self.swap_to:
            raise ValueError("action 'swap' needs swap_to: the provider to go back to")
        if self.action != "swap" and self.swap_to:
            raise ValueError(f"swap_to is only for action 'swap' (action is {self.action!r})")
        return self


class Provider(BaseModel):
    """One backend of the registry. ``name`` is the key under ``providers:``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = ""
    type: ProviderType
    status: ProviderStatus = ProviderStatus.ACTIVE
    base_url: str | None = None
    models: list[ModelEntry] = Field(default_factory=list)
    health_endpoint: str | None = None
    requires_api_key: bool = False
    env_var: str | None = None
    # vLLM-only knobs (provider level, next to the registry's existing ones)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_model_len: int | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, gt=0)
    quantization: str | None = None
    revision: str | None = None
    enforce_eager: bool = False
    trust_remote_code: bool = False
    extra_args: list[str] = Field(default_factory=list)
    vllm_bin: str | None = None
    vllm_version: str | None = None
    """Pins the vLLM release gpumgr assumes for this provider (``0.34.0``) instead of asking
    ``vllm --version``: flags table, memory model and Turing rules follow it."""
    location: str | None = None
    gpu: int = Field(default=0, ge=0)
    enable_sleep_mode: bool = False
    swap_mode: Literal["restart", "sleep"] | None = None
    """How a swap takes this engine off the card: stop it (``restart``, the default of
    ``vllm.swap_mode``) or put it to sleep (vLLM sleep mode: weights to host RAM, woken in
    seconds). ``sleep`` starts it with ``--enable-sleep-mode``."""
    pinned: bool = False
    """No policy and no Ollama eviction ever stops, sleeps or swaps this provider out; only an
    operator's explicit command does (docs/policies.md)."""
    idle: IdlePolicy | None = None
    """What to do after a while without requests (sleep, stop, swap back to a default)."""
    policy: Literal["manual", "demand"] = "manual"
    """``demand``: gpumgr may swap this provider in when the router keeps asking for it while a
    swap partner (same port, or same card) holds its place, and out for such a partner
    (docs/policies.md; the numbers are ``policies.demand`` in gpumgr.yaml)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment of the engine (vLLM is often tuned that way, e.g.
    ``VLLM_ATTENTION_BACKEND``). Part of the launch identity; never a secret."""

    @model_validator(mode="before")
    @classmethod
    def _ollama_cloud_as_written(cls, data: Any) -> Any:
        """``type: ollama`` at a remote ``https://`` base_url with an ``env_var`` is Ollama Cloud
        (how owners write it): probed, reported and advised on as the cloud, not a local server."""
        if isinstance(data, dict) and looks_like_ollama_cloud(data):
            return {**data, "type": ProviderType.OLLAMA_CLOUD.value}
        return data

    @field_validator("vllm_version")
    @classmethod
    def _version_shape(cls, v: str | None) -> str | None:
        if v is not None and not VLLM_VERSION_PIN.match(v):
            raise ValueError(f"must be a release like '0.34.0' (got {v!r})")
        return v

    @field_validator("models", mode="before")
    @classmethod
    def _string_models(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env_scalars(cls, v: Any) -> Any:
        """YAML gives ``3`` or ``true`` for unquoted values; the environment holds strings."""
        if isinstance(v, dict):
            return {k: (str(x).lower() if isinstance(x, bool) else str(x))
                    if isinstance(x, (int, float, bool)) else x for k, x in v.items()}
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not ENV_VAR_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name in MANAGED_ENV:
                raise ValueError(f"{name} is set by gpumgr for every engine; remove it here")
            if secret_looking_name(name):
                raise ValueError(
                    f"{name} looks like a secret: secrets never live in providers.yaml (name "
                    "the variable in env_var, or use a systemd credential)"
                )
        return v

    @field_validator("env_var")
    @classmethod
    def _env_var_is_a_name(cls, v: str | None) -> str | None:
        if v is not None and not ENV_VAR_NAME.match(v):
            raise ValueError(
                "must name an environment variable (letters, digits, underscore), "
                "never hold the secret itself"
            )
        return v

    @field_validator("base_url")
    @classmethod
    def _url_where_acted_on(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("status") in (ProviderStatus.TEMPLATE, ProviderStatus.DISABLED):
            return v  # placeholders such as http://YOUR-HOST:PORT are kept, not checked
        if v is not None:
            _check_url(v)
        return v

    # -- derived facts ---------------------------------------------------------------------
    @property
    def port(self) -> int | None:
        if not self.base_url:
            return None
        parts = urlsplit(self.base_url)
        if parts.port is not None:
            return parts.port
        return {"http": 80, "https": 443}.get(parts.scheme)

    @property
    def host(self) -> str | None:
        return urlsplit(self.base_url).hostname if self.base_url else None

    @property
    def bind_host(self) -> str:
        """The ``--host`` of a managed vLLM server: the loopback host its base_url names."""
        return bind_address(self.host)

    @property
    def is_vllm(self) -> bool:
        return self.type is ProviderType.VLLM

    @property
    def served_names(self) -> list[str]:
        """Every name the backend answers to: each model's served name plus its aliases, in order."""
        names: list[str] = []
        for m in self.models:
            for n in [m.served_name, *m.aliases]:
                if n not in names:
                    names.append(n)
        return names

    @property
    def model_names(self) -> list[str]:
        """Every name the registry may use for this provider's models: listed names, served
        names and aliases."""
        names = [m.name for m in self.models]
        return names + [n for n in self.served_names if n not in names]

    @property
    def served_model_name(self) -> str | None:
        """What the router sends to this backend for its (first) model."""
        return self.models[0].served_name if self.models else None

    @property
    def vllm_model(self) -> ModelEntry | None:
        """The model a vLLM server loads (its first entry; the rest are served as aliases)."""
        return self.models[0] if self.models else None

    @property
    def hf_repo(self) -> str | None:
        m = self.vllm_model
        return m.resolved_hf_repo if m else None

    @property
    def hf_revision(self) -> str | None:
        m = self.vllm_model
        return (m.revision if m and m.revision else None) or self.revision

    @property
    def effective_quantization(self) -> str | None:
        m = self.vllm_model
        return (m.quantization if m and m.quantization else None) or self.quantization

    @property
    def runs_here(self) -> bool:
        """Active or standby: a provider gpumgr may act on (templates and disabled are listed only)."""
        return self.status in (ProviderStatus.ACTIVE, ProviderStatus.STANDBY)


def looks_like_ollama_cloud(data: dict[str, Any]) -> bool:
    """``type: ollama``, an ``https://`` base_url whose host is not this machine, an ``env_var``."""
    url, env_var = data.get("base_url"), data.get("env_var")
    if data.get("type") != ProviderType.OLLAMA.value or not isinstance(url, str) or not env_var:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname) and not is_loopback(parts.hostname)


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL with a host (got {url!r})")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"port must be 1-65535 (got {url!r})") from None
    if port is None and parts.scheme == "http":
        raise ValueError(f"must carry a port, e.g. http://127.0.0.1:8001 (got {url!r})")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535 (got {url!r})")


class HealthChecks(BaseModel):
    """The registry's top-level ``health_checks:`` block (honoured by the health scheduler)."""

    model_config = ConfigDict(extra="allow")

    interval_seconds: float | None = Field(default=None, gt=0)
    timeout_seconds: float | None = Field(default=None, gt=0)
    retry_attempts: int | None = Field(default=None, ge=1)


class ProvidersFile(BaseModel):
    model_config = ConfigDict(extra="allow")

    providers: dict[str, Provider]
    health_checks: HealthChecks = Field(default_factory=HealthChecks)
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _names(self) -> ProvidersFile:
        """Each provider's ``name`` is its key (a copy: providers are frozen values)."""
        self.providers = {
            name: p if p.name == name else p.model_copy(update={"name": name})
            for name, p in self.providers.items()
        }
        return self


class ExactMatch(BaseModel):
    """One router name (the key under ``exact_matches``) and the provider that serves it.

    ``priority`` is kept as written: a word (``primary``, ``secondary``, ``tertiary`` …) or an
    integer. ``fallback`` names a router name, a provider's model, or a provider (whatever that
    provider serves). ``backend_model`` names the provider's model that serves this router name
    when the key is not itself one of the provider's model names.
    """

    model_config = ConfigDict(extra="allow")

    provider: str
    priority: int | str | None = None
    fallback: str | list[str] | None = None
    backend_model: str | None = None


class PatternRule(BaseModel):
    model_config = ConfigDict(extra="allow")

    pattern: str
    provider: str | None = None
    model: str | None = None


class Capability(BaseModel):
    model_config = ConfigDict(extra="allow")

    preferred_models: list[str] = Field(default_factory=list)
    routing_strategy: str | None = None


class LoadBalancing(BaseModel):
    """``load_balancing:`` of ``model-mappings.yaml``: how the router picks among backends.

    gpumgr never routes by it; what its LiteLLM config does is ``strategy: priority`` (each
    router name goes to its one backend, then down its fallback chain in order) and
    ``health_aware: true`` (the gpumgr callback skips backends gpumgr reports down). These are
    the keys and values ``gpumgr validate`` checks (``config/load_balancing.py``): anything else
    is kept for the router and warned about, never an error. This model documents the keys; the
    file's section is read as written (``MappingsFile.load_balancing``).
    """

    model_config = ConfigDict(extra="allow")

    strategy: Literal["priority"] | None = None
    health_aware: bool | None = None


class FallbackChain(BaseModel):
    model_config = ConfigDict(extra="allow")

    chain: list[str] = Field(default_factory=list)


class MappingsFile(BaseModel):
    """``model-mappings.yaml``: the router's view, read to validate and to generate LiteLLM config."""

    model_config = ConfigDict(extra="allow")

    exact_matches: dict[str, ExactMatch] = Field(default_factory=dict)
    patterns: list[PatternRule] | dict[str, Any] = Field(default_factory=list)
    capabilities: dict[str, Capability] = Field(default_factory=dict)
    load_balancing: Any = Field(default_factory=dict)
    """As written: checked by ``config/load_balancing.py`` with warnings only (``LoadBalancing``
    lists what gpumgr's LiteLLM config does), so a surprise here never stops a load."""
    fallback_chains: dict[str, FallbackChain] = Field(default_factory=dict)

    @field_validator("fallback_chains", mode="before")
    @classmethod
    def _plain_lists(cls, v: Any) -> Any:
        """``model: [a, b]`` is accepted as shorthand for ``model: {chain: [a, b]}``."""
        if isinstance(v, dict):
            return {k: {"chain": c} if isinstance(c, list) else c for k, c in v.items()}
        return v

    def chain(self, key: str) -> list[str]:
        c = self.fallback_chains.get(key)
        return list(c.chain) if c else []
