"""The Ollama Cloud key's variable name, as LiteLLM reads it (pure; no I/O).

LiteLLM 1.108.7 reads ``$OLLAMA_API_KEY`` for every Ollama deployment that carries no
``api_key`` of its own and sends it as ``Authorization: Bearer …``: ``litellm/main.py``
``_complete_ollama_chat`` (``api_key or litellm.ollama_key or os.environ.get("OLLAMA_API_KEY")``,
line 4553) for ``ollama_chat/`` models, ``litellm_core_utils/get_llm_provider_logic.py`` (line
709) for ``ollama/`` ones. An owner whose Ollama Cloud key lives in a variable of that name must
put it in the proxy's environment for the cloud entry, and from there LiteLLM sends it to the
local Ollama with every request: the cloud key leaves for a process that has no use for it.

gpumgr accepts such a registry unchanged (the daemon itself sends the key only to the cloud):
``gpumgr validate`` warns with the fix (rename the variable), and ``gpumgr litellm-config`` gives
the other Ollama entries an explicit placeholder key so that LiteLLM has no reason to reach for
the variable (``litellm_config.py``).
"""

from __future__ import annotations

from typing import Any

from gpumgr.config.registry import Provider, ProvidersFile, ProviderType
from gpumgr.config.source import YamlSource
from gpumgr.errors import ConfigIssue

LITELLM_OLLAMA_KEY_ENV = "OLLAMA_API_KEY"
"""The variable LiteLLM sends to every Ollama deployment without an ``api_key`` of its own."""
SAFE_NAME = "OLLAMA_CLOUD_API_KEY"
"""The name the warning suggests (and the one config/providers.yaml uses)."""
CLOUD_KEY_REF = f"os.environ/{LITELLM_OLLAMA_KEY_ENV}"
"""How a LiteLLM config entry takes its key from that variable."""
OLLAMA_MODEL_PREFIXES = ("ollama/", "ollama_chat/")


def cloud_keyed_ollama(model_list: Any) -> list[tuple[str, dict[str, Any]]]:
    """In a LiteLLM config's ``model_list``: ``(model_name, litellm_params)`` of each Ollama
    entry, when one of them takes its key from ``$OLLAMA_API_KEY``; empty otherwise."""
    if not isinstance(model_list, list):
        return []
    ollama = [
        (str(e.get("model_name")), e["litellm_params"]) for e in model_list
        if isinstance(e, dict) and isinstance(e.get("litellm_params"), dict)
        and str(e["litellm_params"].get("model", "")).startswith(OLLAMA_MODEL_PREFIXES)
    ]
    return ollama if any(p.get("api_key") == CLOUD_KEY_REF for _, p in ollama) else []


def keyless_beside_cloud_key(model_list: Any) -> list[tuple[str, dict[str, Any]]]:
    """The Ollama entries without an ``api_key`` beside one keyed by ``$OLLAMA_API_KEY``
    (LiteLLM sends that key to these too): what ``litellm-config`` pins and doctor warns about."""
    return [(name, p) for name, p in cloud_keyed_ollama(model_list) if not p.get("api_key")]


def leaking_clouds(pf: ProvidersFile) -> list[Provider]:
    """Ollama Cloud providers (active or standby) whose key variable LiteLLM also sends to
    other Ollama servers."""
    return [
        p for p in pf.providers.values()
        if p.runs_here and p.type is ProviderType.OLLAMA_CLOUD
        and p.env_var == LITELLM_OLLAMA_KEY_ENV
    ]


def keyless_ollamas(pf: ProvidersFile) -> list[Provider]:
    """Ollama servers (active or standby, not the cloud) with no key of their own: the ones
    LiteLLM would send ``$OLLAMA_API_KEY`` to."""
    return [
        p for p in pf.providers.values()
        if p.runs_here and p.type is ProviderType.OLLAMA and not p.env_var
    ]


def cloud_key_exposed(pf: ProvidersFile) -> bool:
    """Whether a LiteLLM proxy serving this registry would send the Ollama Cloud key to another
    Ollama server (a cloud keyed by ``OLLAMA_API_KEY`` and a keyless Ollama beside it)."""
    return bool(leaking_clouds(pf)) and bool(keyless_ollamas(pf))


def check_cloud_key_name(pf: ProvidersFile, src: YamlSource) -> list[ConfigIssue]:
    """A warning on each cloud's ``env_var`` line when the key would leak; never an error (the
    registry is accepted as the owner wrote it, and gpumgr itself sends the key to the cloud only).
    The message names the variable, never its value."""
    locals_ = keyless_ollamas(pf)
    if not locals_:
        return []
    where = ", ".join(f"'{p.name}'" + (f" ({p.base_url})" if p.base_url else "") for p in locals_)
    return [
        src.issue(
            ("providers", cloud.name, "env_var"),
            f"LiteLLM sends ${LITELLM_OLLAMA_KEY_ENV} to every Ollama deployment without a key "
            f"of its own, so this Ollama Cloud key also goes to {where} with each request "
            f"there; rename the variable, e.g. env_var: {SAFE_NAME}, and the same name in "
            f"gpumgr's and the LiteLLM proxy's environment (or /etc/gpumgr/credentials/"
            f"{SAFE_NAME}) and in a hand-written LiteLLM config (os.environ/{SAFE_NAME}); "
            f"`gpumgr litellm-config` gives those Ollama entries api_key: none until then",
        )
        for cloud in leaking_clouds(pf)
    ]
