"""Checks of one managed vLLM provider that need vLLM's own tables (pure; no I/O).

They run in ``gpumgr validate``, ``gpumgr plan`` and at every reload, so a standby provider with
a flag vLLM would reject is refused before a swap reaches it, not after six restarts. The tables
are ``gpumgr.engines.vllm_flags`` (generated from vLLM 0.33.0's parser): pure data, no I/O.
"""

from __future__ import annotations

from gpumgr.config.hosts import is_loopback
from gpumgr.config.registry import Provider
from gpumgr.config.source import KeyPath, YamlSource
from gpumgr.engines.vllm_flags import (
    DEPRECATED_QUANTIZATION_METHODS,
    QUANTIZATION_METHODS,
    VLLM_VERSION,
    ServeArgsError,
    check_extra_args,
    parse_serve_args,
)
from gpumgr.errors import ConfigIssue


def check_vllm_provider(p: Provider, src: YamlSource) -> list[ConfigIssue]:
    """Problems of an active or standby vLLM provider, each located at the key to change."""
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
            check_extra_args(list(p.extra_args))
        except ServeArgsError as exc:
            extra_ok = False
            path = (*here, "extra_args") + ((exc.index,) if exc.index is not None else ())
            issues.append(src.issue(path, str(exc)))
    if p.quantization is not None:
        issues.extend(_check_quantization(p, src, allow_deprecated=extra_ok and _allows_deprecated(p)))
    return issues


def _allows_deprecated(p: Provider) -> bool:
    parsed = parse_serve_args(list(p.extra_args))
    return parsed.switch("allow_deprecated_quantization")


def _check_quantization(p: Provider, src: YamlSource, *, allow_deprecated: bool) -> list[ConfigIssue]:
    """A provider-level ``quantization`` is passed to ``--quantization``: vLLM must know it."""
    assert p.quantization is not None
    method = p.quantization.strip().lower()
    path = ("providers", p.name, "quantization")
    if method not in QUANTIZATION_METHODS:
        known = ", ".join(sorted(QUANTIZATION_METHODS - DEPRECATED_QUANTIZATION_METHODS))
        return [
            src.issue(
                path,
                f"{p.quantization!r} is not a quantization method of vLLM {VLLM_VERSION} "
                f"(one of: {known}); remove the key to let vLLM read the checkpoint's own",
            )
        ]
    if method in DEPRECATED_QUANTIZATION_METHODS and not allow_deprecated:
        return [
            src.issue(
                path,
                f"{method!r} is deprecated in vLLM {VLLM_VERSION}, which refuses it unless "
                "extra_args has --allow-deprecated-quantization",
            )
        ]
    return []
