"""Doctor checks of a vLLM provider against the release it really runs (pure).

``vllm --version`` says which release; the provider's flags and quantization are checked
against that release's tables, an unknown newer release is allowed with a warning (the newest
known table is used), and the card's compute capability brings the Turing rules
(``gpumgr.vllm_tables.rules``). One more check says which engine endpoints answer without the
API key, so an operator knows why engines must stay on loopback.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpumgr.doctor import Check, fail, ok, warn
from gpumgr.vllm_tables.releases import NEWEST_KNOWN, Release
from gpumgr.vllm_tables.rules import CardFinding

UNAUTHENTICATED = ("/sleep", "/wake_up", "/is_sleeping", "/collective_rpc", "/reset_prefix_cache")
"""vLLM's ``--api-key`` guards ``/v1`` and a few other prefixes only; these answer anyone who
reaches the port (with ``VLLM_SERVER_DEV_MODE=1``, which sleep mode needs)."""
UNAUTHENTICATED_034 = ("/checkpoint/*",)
"""Added by 0.34 (``--checkpoint-prepare-on-startup``)."""


def check_release(provider: str, release: Release, config_issues: Sequence[str]) -> Check:
    """The release's flags table applied to the provider, and whether gpumgr knows it."""
    name = f"vllm.{provider}.release"
    if config_issues:
        return fail(name, f"vLLM {release.label} would refuse the provider: {config_issues[0]}"
                    + (f" (+{len(config_issues) - 1} more)" if len(config_issues) > 1 else ""),
                    "fix extra_args/quantization for this release, or pin another vllm_bin")
    if release.reported is None:
        return warn(name, f"release unknown: checked as vLLM {release.table_version}",
                    "make `<vllm> --version` work, or set the provider's vllm_version")
    memory = ("extensible KV cache: the fraction is a cap, the KV cache may come up smaller "
              "than planned (published as kv_cache_tokens_actual)" if release.extensible_kv_cache
              else "KV cache sized at start; a start refused when the slice is not free")
    if release.newer_than_known:
        return warn(name, f"vLLM {release.reported} is newer than the tables gpumgr knows "
                    f"(newest {NEWEST_KNOWN}): flags checked with {release.table_version}'s; {memory}",
                    "generate its tables (scripts/gen_vllm_tables.py) when gpumgr is updated")
    if not release.exact:
        return warn(name, f"vLLM {release.reported} has no table of its own: checked as "
                    f"{release.table_version}; {memory}", "upgrade vLLM to a release gpumgr knows")
    return ok(name, f"vLLM {release.reported}: flags and quantization checked; {memory}")


def check_card(provider: str, findings: Sequence[CardFinding], cc: str) -> Check:
    """The Turing rules for the provider's card."""
    name = f"vllm.{provider}.card"
    errors = [f for f in findings if f.level == "error"]
    if errors:
        return fail(name, errors[0].message, errors[0].fix)
    if findings:
        return warn(name, findings[0].message, findings[0].fix)
    return ok(name, f"nothing this release lacks on compute capability {cc}")


def check_endpoints(releases: Sequence[Release], sleep_mode: bool) -> Check:
    """Which endpoints of the engines answer without the API key."""
    paths = list(UNAUTHENTICATED)
    if any(r.version >= (0, 34, 0) for r in releases):
        paths += UNAUTHENTICATED_034
    text = (f"unauthenticated engine endpoints ({', '.join(paths)}): gpumgr binds every engine "
            "to loopback; keep it so on a shared host")
    if sleep_mode:
        return warn("vllm.endpoints", text + "; sleep mode is on, so anyone on this host can put "
                    "an engine to sleep (gpumgr then publishes it `sleeping`)",
                    "restrict who can log in here, or use swap_mode: restart")
    return ok("vllm.endpoints", text)
