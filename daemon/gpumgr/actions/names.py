"""What an operator's NAME means: a provider name, a served model name or an alias.

``gpumgr swap qwen-7b qwen-14b`` and ``gpumgr stop qwen-coder-vllm`` must both work. Swap
partners may share an alias, so a name can be ambiguous: the error lists the candidates instead
of guessing. Pure: the configuration in, a provider name or a typed error out.
"""

from __future__ import annotations

from gpumgr.config import Config
from gpumgr.errors import InputError


class UnknownName(InputError):
    """No provider, served model or alias has this name."""


class AmbiguousName(InputError):
    """Several providers answer to this name."""


class NotManaged(InputError):
    """The name is a provider gpumgr does not run (Ollama, the cloud, a template...)."""


def resolve_managed(config: Config, name: str) -> str:
    """The managed (vLLM, active or standby) provider ``name`` means."""
    if name in config.providers:
        found = name
    else:
        matches = [p.name for p in config.providers.values() if name in p.served_names]
        managed = [m for m in matches if _managed(config, m)]
        candidates = managed or matches
        if not candidates:
            known = ", ".join(sorted(n for n in config.providers if _managed(config, n)))
            raise UnknownName(f"no provider or served model is named {name!r} (managed: {known})")
        if len(candidates) > 1:
            raise AmbiguousName(
                f"{name!r} is served by several providers: {', '.join(candidates)}; name one"
            )
        found = candidates[0]
    if not _managed(config, found):
        p = config.providers[found]
        raise NotManaged(
            f"{found} is a {p.type.value} provider with status {p.status.value}: gpumgr only "
            "starts and stops vLLM providers that are active or standby"
        )
    return found


def _managed(config: Config, name: str) -> bool:
    p = config.providers[name]
    return p.is_vllm and p.runs_here
