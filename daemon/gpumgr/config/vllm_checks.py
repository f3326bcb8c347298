"""Checks of one managed vLLM provider that need vLLM's own tables (pure; no I/O).

They run in ``gpumgr validate``, ``gpumgr plan`` and at every reload, so a standby provider with
a flag vLLM would reject is refused before a swap reaches it, not after six restarts. The tables
are ``gpumgr.vllm_tables`` (generated from each release's parser): pure data, no I/O. Each
provider is checked against its own release: the ``release`` passed in (what ``vllm --version``
said, where the caller asked), else the provider's ``vllm_version`` pin. When neither is known
(``gpumgr validate`` runs nothing), a provider passes when SOME known release accepts it: the
launch and ``gpumgr doctor`` check it again against the release its command reports, before
anything starts, so a flag of the wrong release is still refused before a crash loop.
"""

from __future__ import annotations

from gpumgr.config.hosts import is_loopback
from gpumgr.config.registry import Provider
from gpumgr.config.source import KeyPath, YamlSource
from gpumgr.errors import ConfigIssue
from gpumgr.vllm_tables.parser import FlagTable, ServeArgsError, check_extra_args, parse_serve_args
from gpumgr.vllm_tables.releases import DEFAULT_RELEASE, KNOWN_VERSIONS, Release, release_for


def provider_release(p: Provider, probed: str | None = None) -> Release:
    """The release a provider's checks use: its pin wins over what ``vllm --version`` said."""
    return release_for(p.vllm_version or probed)


def check_vllm_provider(p: Provider, src: YamlSource, release: Release | None = None) -> list[ConfigIssue]:
    """Problems of an active or standby vLLM provider, each located at the key to change."""
    if release is None and p.vllm_version is None:
        return _any_release(p, src)
    release = release or provider_release(p)
    table = release.flags
    here = ("providers", p.name)
    issues: list[ConfigIssue] = []
    if p.hf_repo is None:
        path: KeyPath = (*here, "models", 0, "name") if p.vllm_model else (*here, "models")
        issues.append(
            src.issue(
                path,
                "a vLLM provider needs a Hugging Face repo: set hf_repo: org/repo "
                "or name the model org/repo",
            )
        )
    if p.base_url is None:
        issues.append(src.issue(here, "a vLLM provider needs base_url"))
    elif not is_loopback(p.host):
        issues.append(
            src.issue(
                (*here, "base_url"),
                f"host {p.host!r} is not a loopback address: gpumgr binds the vLLM server it "
                "manages to the base_url's host, and only on loopback (vLLM's sleep and dev "
                f"endpoints have no authentication); use http://127.0.0.1:{p.port or 'PORT'}, "
                "or, for a vLLM server gpumgr does not run, type: openai_compatible",
            )
        )
    extra_ok = True
    if p.extra_args:
        try:
            check_extra_args(list(p.extra_args), table)
        except ServeArgsError as exc:
            extra_ok = False
            path = (*here, "extra_args") + ((exc.index,) if exc.index is not None else ())
            issues.append(src.issue(path, str(exc)))
    if p.quantization is not None:
        allow = extra_ok and _allows_deprecated(p, table)
        issues.extend(_check_quantization(p, src, table, allow_deprecated=allow))
    return issues


def _any_release(p: Provider, src: YamlSource) -> list[ConfigIssue]:
    """The issues of the release that has the fewest (the default's on a tie): a provider
    unknown to run any particular release is fine when one known release accepts it."""
    results = [check_vllm_provider(p, src, release_for(v)) for v in (DEFAULT_RELEASE,
               *[k for k in KNOWN_VERSIONS if k != DEFAULT_RELEASE])]  # fmt: skip
    return min(results, key=len)


def _allows_deprecated(p: Provider, table: FlagTable) -> bool:
    parsed = parse_serve_args(list(p.extra_args), table)
    return parsed.switch("allow_deprecated_quantization")


def _check_quantization(
    p: Provider, src: YamlSource, table: FlagTable, *, allow_deprecated: bool
) -> list[ConfigIssue]:
    """A provider-level ``quantization`` is passed to ``--quantization``: the provider's vLLM
    release must know it."""
    assert p.quantization is not None
    method = p.quantization.strip().lower()
    path = ("providers", p.name, "quantization")
    methods, deprecated = table.quantization_methods, table.deprecated_quantization_methods
    if method not in methods:
        known = ", ".join(sorted(methods - deprecated))
        return [
            src.issue(
                path,
                f"{p.quantization!r} is not a quantization method of vLLM {table.version} "
                f"(one of: {known}); remove the key to let vLLM read the checkpoint's own",
            )
        ]
    if method in deprecated and not allow_deprecated:
        return [
            src.issue(
                path,
                f"{method!r} is deprecated in vLLM {table.version}, which refuses it unless "
                "extra_args has --allow-deprecated-quantization",
            )
        ]
    return []
