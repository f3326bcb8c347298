"""Checks that need more than one provider or more than one file (pure; no I/O).

Each returns issues located in the file that must change: a port clash is reported on the second
provider's ``base_url``, an unknown reference on the mapping that makes it.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict

from gpumgr.config.hosts import collision_host
from gpumgr.config.registry import MappingsFile, ProvidersFile, ProviderStatus
from gpumgr.config.source import YamlSource
from gpumgr.config.vllm_checks import check_vllm_provider
from gpumgr.errors import ConfigIssue

DEFAULT_CHAIN = "default"
"""``fallback_chains.default`` is the chain for models without one; it is not a model."""


PROVIDER_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
"""Provider names become file names (``<log_dir>/<name>.log``) and URL path segments
(``/v1/backends/{name}``): no ``/``, no leading ``.``, nothing that needs escaping."""
PROVIDER_NAME_RULE = (
    "a provider name must be 1-64 characters: letters, digits, '.', '_' and '-', "
    "not starting with '.' (it names log files and URL paths)"
)


def check_providers(pf: ProvidersFile, src: YamlSource) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    # Same-port vLLM providers are swap partners: at most one of them may be active. Every
    # spelling of this machine (127.0.0.1, localhost, 0.0.0.0, ::1) is one host here.
    active_on: dict[tuple[str | None, int | None], str] = {}
    for name, p in pf.providers.items():
        if not PROVIDER_NAME.match(name):
            issues.append(src.issue(("providers", name), f"{PROVIDER_NAME_RULE} (got {name!r})"))
        if p.is_vllm and p.runs_here:
            issues.extend(check_vllm_provider(p, src))
        if p.is_vllm and p.status is ProviderStatus.ACTIVE and p.base_url:
            key = (collision_host(p.host), p.port)
            if key in active_on:
                issues.append(
                    src.issue(
                        ("providers", name, "base_url"),
                        f"port {p.port} is already used by active provider '{active_on[key]}'; "
                        "same-port providers are swap partners, so at most one may be active",
                    )
                )
            else:
                active_on[key] = name
        if p.requires_api_key and p.runs_here and not p.env_var:
            issues.append(
                src.issue(
                    ("providers", name, "requires_api_key"),
                    "requires_api_key is true but env_var does not name the variable holding the key",
                )
            )
    return issues


def model_owners(pf: ProvidersFile) -> dict[str, list[str]]:
    """Served model name → the providers (not template/disabled) that serve it."""
    owners: dict[str, list[str]] = defaultdict(list)
    for name, p in pf.providers.items():
        if p.runs_here:
            for m in p.served_names:
                owners[m].append(name)
    return dict(owners)


def all_model_names(pf: ProvidersFile) -> set[str]:
    """Every name a provider lists for a model: listed names, served names, aliases."""
    return {m for p in pf.providers.values() for m in p.model_names}


def router_names(pf: ProvidersFile, mf: MappingsFile) -> set[str]:
    """Names a client may ask the router for: ``exact_matches`` keys and every provider model."""
    return set(mf.exact_matches) | all_model_names(pf)


def served_by(pf: ProvidersFile, mf: MappingsFile, provider: str) -> list[str]:
    """The router names a provider serves: its own model names, then the ``exact_matches`` keys
    pointing at it (file order; all there is for a provider without a ``models:`` list)."""
    p = pf.providers.get(provider)
    names = list(p.model_names) if p is not None else []
    names += [k for k, em in mf.exact_matches.items() if em.provider == provider and k not in names]
    return names


def provider_model_for(pf: ProvidersFile, mf: MappingsFile, provider: str, router_name: str) -> str | None:
    """What a fallback entry naming ``provider`` means for ``router_name``: the router name
    itself when the provider serves it, else the first router name the provider serves."""
    names = served_by(pf, mf, provider)
    if router_name in names:
        return router_name
    return names[0] if names else None


def _fix_for(name: str, pf: ProvidersFile, mf: MappingsFile, known: set[str]) -> str:
    """What to write instead of ``name``: the provider's models, or the closest known name."""
    if name in pf.providers:
        served = served_by(pf, mf, name)
        if served:
            listed = ", ".join(f"'{m}'" for m in served[:3]) + (" …" if len(served) > 3 else "")
            return f"'{name}' is a provider; it serves {listed}: name a model here"
        return f"'{name}' is a provider and serves no router name yet: name a model here"
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown model '{name}'{hint}"


def _unknown_ref(name: str, known: set[str], providers: set[str]) -> str:
    """An ``exact_matches`` fallback that names neither a model nor a provider."""
    close = difflib.get_close_matches(name, sorted(known | providers), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown model or provider '{name}'{hint}"


def check_mappings(
    pf: ProvidersFile, mf: MappingsFile, src: YamlSource, providers_src: YamlSource
) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """(errors, warnings). The daemon never routes by ``model-mappings.yaml``: a bad reference
    there is the router's problem, a warning with its fix (``litellm-config`` leaves it out).
    The one error is a model two providers serve with nothing saying which (``gpumgr swap``
    and the status would not know which backend a name means)."""
    errors: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    known_models = router_names(pf, mf)
    known_providers = set(pf.providers)

    for model, em in mf.exact_matches.items():
        here = ("exact_matches", model)
        provider = pf.providers.get(em.provider)
        if provider is None:
            close = difflib.get_close_matches(em.provider, sorted(known_providers), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            warnings.append(src.issue((*here, "provider"), f"unknown provider '{em.provider}'{hint}"))
        elif not provider.models:
            pass  # no models: list (a llama.cpp server serves what it loaded): any name is its
        elif em.backend_model is not None:
            if em.backend_model not in provider.model_names:
                warnings.append(
                    src.issue(
                        (*here, "backend_model"),
                        f"provider '{em.provider}' does not list model '{em.backend_model}' "
                        f"(it lists: {', '.join(provider.model_names) or 'nothing'})",
                    )
                )
        elif model not in provider.model_names and len(provider.models) != 1:
            # One model: the router name is that model. Several: which one is ambiguous.
            warnings.append(
                src.issue(
                    here,
                    f"provider '{em.provider}' does not list model '{model}'; set backend_model "
                    f"to the one that serves it ({', '.join(provider.model_names) or 'none listed'})",
                )
            )
        fallbacks = [em.fallback] if isinstance(em.fallback, str) else list(em.fallback or [])
        for i, fb in enumerate(fallbacks):
            if fb not in known_models and fb not in known_providers:
                path = (*here, "fallback") + ((i,) if isinstance(em.fallback, list) else ())
                warnings.append(src.issue(path, _unknown_ref(fb, known_models, known_providers)))

    if isinstance(mf.patterns, list):
        for i, rule in enumerate(mf.patterns):
            if rule.provider is not None and rule.provider not in known_providers:
                warnings.append(
                    src.issue(("patterns", i, "provider"), f"unknown provider '{rule.provider}'")
                )
            if rule.model is not None and rule.model not in known_models:
                warnings.append(
                    src.issue(("patterns", i, "model"), _fix_for(rule.model, pf, mf, known_models))
                )

    for cap_name, cap in mf.capabilities.items():
        for i, m in enumerate(cap.preferred_models):
            if m not in known_models:
                warnings.append(
                    src.issue(
                        ("capabilities", cap_name, "preferred_models", i),
                        _fix_for(m, pf, mf, known_models),
                    )
                )

    chains = {k: list(c.chain) for k, c in mf.fallback_chains.items()}
    for key, chain in chains.items():
        if key != DEFAULT_CHAIN and key not in known_models:
            warnings.append(
                src.issue(("fallback_chains", key), _fix_for(key, pf, mf, known_models))
            )
        for i, entry in enumerate(chain):
            path = ("fallback_chains", key, "chain", i)
            if entry == key:
                warnings.append(src.issue(path, f"chain of '{key}' falls back to itself"))
            elif entry not in known_models and entry not in known_providers:
                warnings.append(src.issue(path, _fix_for(entry, pf, mf, known_models)))
    warnings.extend(_cycles(chains, src))

    # A model served by several providers is ambiguous unless exact_matches pins it, or the
    # providers are same-port vLLM swap partners (only one of them runs at a time).
    for model, owners in model_owners(pf).items():
        if len(owners) < 2 or model in mf.exact_matches:
            continue
        ports = {(pf.providers[o].is_vllm, pf.providers[o].port) for o in owners}
        if len(ports) == 1 and next(iter(ports))[0]:
            continue
        second = owners[1]
        idx = pf.providers[second].served_names.index(model)
        errors.append(
            providers_src.issue(
                ("providers", second, "models", min(idx, len(pf.providers[second].models) - 1)),
                f"model '{model}' is also served by '{owners[0]}'; add an exact_matches entry in "
                "model-mappings.yaml to say which backend serves it",
            )
        )
    return errors, warnings


def _cycles(chains: dict[str, list[str]], src: YamlSource) -> list[ConfigIssue]:
    """One issue per chain key from which the key itself is reachable (through other chains)."""
    issues = []
    for start in chains:
        if start == DEFAULT_CHAIN:
            continue
        stack = [(e, [start, e]) for e in chains[start] if e != start]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            if node == start:
                issues.append(
                    src.issue(
                        ("fallback_chains", start),
                        "fallback cycle: " + " -> ".join(trail),
                    )
                )
                break
            if node in seen:
                continue
            seen.add(node)
            stack.extend((e, [*trail, e]) for e in chains.get(node, []))
    return issues
