"""Checks that need more than one provider or more than one file (pure; no I/O).

Each returns issues located in the file that must change: a port clash is reported on the second
provider's ``base_url``, an unknown reference on the mapping that makes it.
"""

from __future__ import annotations

from collections import defaultdict

from gpumgr.config.registry import MappingsFile, ProvidersFile, ProviderStatus
from gpumgr.config.source import YamlSource
from gpumgr.errors import ConfigIssue

DEFAULT_CHAIN = "default"
"""``fallback_chains.default`` is the chain for models without one; it is not a model."""


def check_providers(pf: ProvidersFile, src: YamlSource) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    # Same-port vLLM providers are swap partners: at most one of them may be active.
    active_on: dict[tuple[str | None, int | None], str] = {}
    for name, p in pf.providers.items():
        if p.is_vllm and p.runs_here:
            if p.hf_repo is None:
                first = p.vllm_model
                path = ("providers", name, "models", 0, "name") if first else ("providers", name, "models")
                issues.append(
                    src.issue(
                        path,
                        "a vLLM provider needs a Hugging Face repo: set hf_repo: org/repo "
                        "or name the model org/repo",
                    )
                )
            if p.base_url is None:
                issues.append(src.issue(("providers", name), "a vLLM provider needs base_url"))
        if p.is_vllm and p.status is ProviderStatus.ACTIVE and p.base_url:
            key = (p.host, p.port)
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
    return {m for p in pf.providers.values() for m in p.served_names}


def check_mappings(
    pf: ProvidersFile, mf: MappingsFile, src: YamlSource, providers_src: YamlSource
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    known_models = all_model_names(pf)
    known_providers = set(pf.providers)

    for model, em in mf.exact_matches.items():
        if em.provider not in known_providers:
            issues.append(
                src.issue(("exact_matches", model, "provider"), f"unknown provider '{em.provider}'")
            )
        elif model not in pf.providers[em.provider].served_names:
            issues.append(
                src.issue(
                    ("exact_matches", model),
                    f"provider '{em.provider}' does not list model '{model}'",
                )
            )
        fallbacks = [em.fallback] if isinstance(em.fallback, str) else list(em.fallback or [])
        for i, fb in enumerate(fallbacks):
            if fb not in known_models:
                path = ("exact_matches", model, "fallback") + ((i,) if isinstance(em.fallback, list) else ())
                issues.append(src.issue(path, f"unknown model '{fb}'"))

    for cap_name, cap in mf.capabilities.items():
        for i, m in enumerate(cap.preferred_models):
            if m not in known_models:
                issues.append(
                    src.issue(("capabilities", cap_name, "preferred_models", i), f"unknown model '{m}'")
                )

    chains = {k: list(c.chain) for k, c in mf.fallback_chains.items()}
    for key, chain in chains.items():
        if key != DEFAULT_CHAIN and key not in known_models:
            issues.append(src.issue(("fallback_chains", key), f"unknown model '{key}'"))
        for i, entry in enumerate(chain):
            path = ("fallback_chains", key, "chain", i)
            if entry == key:
                issues.append(src.issue(path, f"chain of '{key}' falls back to itself"))
            elif entry not in known_models:
                issues.append(src.issue(path, f"unknown model '{entry}'"))
    issues.extend(_cycles(chains, src))

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
        issues.append(
            providers_src.issue(
                ("providers", second, "models", min(idx, len(pf.providers[second].models) - 1)),
                f"model '{model}' is also served by '{owners[0]}'; add an exact_matches entry in "
                "model-mappings.yaml to say which backend serves it",
            )
        )
    return issues


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
