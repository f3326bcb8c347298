"""``gpumgr litellm-config --merge``: the operator's LiteLLM config, updated from the registry.

Pure: ``merge(existing, generated)`` takes the operator's parsed file and what
``litellm_config`` builds, and returns the merged config plus one line per change. What it does:

- ``model_list``: an entry whose ``model_name`` the registry knows gets the registry's
  ``model``, ``api_base`` and ``api_key`` (when the registry has one) and
  ``model_info.gpumgr_backend``; every other key the operator wrote stays (``timeout``,
  ``stream_timeout``, ``num_gpu_layers``, ``stream`` …). Names the registry adds are appended;
  entries the registry does not know (a capability name clients use, a hosted API) are kept.
- ``router_settings.fallbacks``: the registry's chain replaces the operator's for the same
  name; chains for other names (capability names) are kept; ``default_fallbacks`` is the
  registry's when it has a ``default`` chain. Nothing else of ``router_settings`` changes:
  ``num_retries``, ``retry_after``, ``allowed_fails``, ``cooldown_time`` stay as written (the
  callback alone makes a stopped backend fail over at once: integrations/litellm/failover.py).
- The Ollama Cloud key in ``$OLLAMA_API_KEY``: every Ollama entry without a key (the
  operator's own included) gets ``api_key: none``, so LiteLLM does not send the cloud key to the
  local Ollama (``litellm_config.pin_ollama_keys``).
- ``litellm_settings.callbacks``: gpumgr's callback is added when missing. Cache, Redis,
  ``general_settings`` (auth off included) and everything else are left as they are.

PyYAML does not keep comments: the merged file has none of the original's (the summary says so).
"""

from __future__ import annotations

import copy
from typing import Any

from gpumgr.integrations.litellm_config import CALLBACK, MASTER_KEY_ENV, NO_KEY, pin_ollama_keys

REGISTRY_PARAMS = ("model", "api_base", "api_key")
"""The ``litellm_params`` the registry decides; every other one is the operator's."""

MERGE_HEADER = (
    "# Merged by `gpumgr litellm-config --merge`: model_list and fallbacks follow providers.yaml\n"
    "# and model-mappings.yaml; every other setting is the operator's. (Comments of the\n"
    "# original are not kept: the YAML library drops them.)\n"
)


def _entries_by_name(model_list: list[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in model_list:
        if isinstance(entry, dict) and isinstance(entry.get("model_name"), str):
            out.setdefault(entry["model_name"], entry)
    return out


def _merge_entry(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Update the operator's entry ``mine`` in place from the registry's ``theirs``; the keys
    that changed."""
    changed: list[str] = []
    params = mine.setdefault("litellm_params", {})
    for key in REGISTRY_PARAMS:
        new = theirs["litellm_params"].get(key)
        if new is not None and params.get(key) != new:
            params[key] = new
            changed.append(key)
    info = mine.get("model_info")
    if not isinstance(info, dict):
        info = mine["model_info"] = {}
    for key, value in theirs.get("model_info", {}).items():
        if info.get(key) != value:
            info[key] = value
            changed.append(f"model_info.{key}")
    return changed


def _merge_fallbacks(
    router: dict[str, Any], chains: list[dict[str, list[str]]], summary: list[str]
) -> None:
    existing = router.get("fallbacks")
    existing = existing if isinstance(existing, list) else []
    ours = {next(iter(c)): c for c in chains}
    merged: list[Any] = []
    for item in existing:
        key = next(iter(item)) if isinstance(item, dict) and len(item) == 1 else None
        if key in ours:
            new = ours.pop(key)
            if new != item:
                summary.append(f"fallbacks: {key}: {item[key]} -> {new[key]}")
            merged.append(new)
        else:
            merged.append(item)  # the operator's (a capability name, a hosted model …)
    for key, chain in ours.items():
        summary.append(f"fallbacks: {key}: added {chain[key]}")
        merged.append(chain)
    if merged:
        router["fallbacks"] = merged


def merge(existing: dict[str, Any], generated: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The operator's config with the registry's model list, fallbacks and callback."""
    out = copy.deepcopy(existing)
    summary: list[str] = []

    model_list = out.get("model_list")
    if not isinstance(model_list, list):
        model_list = out["model_list"] = []
    mine = _entries_by_name(model_list)
    for entry in generated["model_list"]:
        name = entry["model_name"]
        if name in mine:
            changed = _merge_entry(mine[name], entry)
            if changed:
                summary.append(f"model_list: {name}: updated {', '.join(changed)}")
        else:
            model_list.append(copy.deepcopy(entry))
            summary.append(f"model_list: {name}: added ({entry['litellm_params']['model']})")
    pinned = pin_ollama_keys(model_list)
    if pinned:
        summary.append(
            f"model_list: {', '.join(pinned)}: api_key: {NO_KEY} added (the Ollama Cloud key is "
            "in $OLLAMA_API_KEY, which LiteLLM would send to these Ollama entries too; "
            "`gpumgr validate` says how to rename it)")
    known = {e["model_name"] for e in generated["model_list"]}
    kept = [n for n in mine if n not in known]
    if kept:
        summary.append(f"model_list: kept as written (not in the registry): {', '.join(kept)}")

    router = out.get("router_settings")
    if not isinstance(router, dict):
        router = out["router_settings"] = {}
    gen_router = generated["router_settings"]
    _merge_fallbacks(router, gen_router.get("fallbacks", []), summary)
    default = gen_router.get("default_fallbacks")
    if default and router.get("default_fallbacks") != default:
        summary.append(f"default_fallbacks: {router.get('default_fallbacks')} -> {default}")
        router["default_fallbacks"] = default

    settings = out.get("litellm_settings")
    if not isinstance(settings, dict):
        settings = out["litellm_settings"] = {}
    callbacks = settings.get("callbacks")
    listed = [callbacks] if isinstance(callbacks, str) else list(callbacks or [])
    if CALLBACK not in listed:
        settings["callbacks"] = [*listed, CALLBACK]
        summary.append(f"litellm_settings.callbacks: added {CALLBACK}")

    general = out.get("general_settings")
    if not (isinstance(general, dict) and general.get("master_key")):
        summary.append(
            f"note: no general_settings.master_key: this LiteLLM refuses to start without one; "
            f"set {MASTER_KEY_ENV} in the proxy's environment"
        )
    summary.append("note: comments of the original are not kept (the YAML library drops them)")
    return out, summary
