"""The configuration registry: three YAML files in one directory, loaded and checked together.

``load_config`` reads ``providers.yaml`` (required), ``model-mappings.yaml`` and ``gpumgr.yaml``
(both optional), reports every problem of every file in one ``ConfigError`` (each naming file,
line, column and key path), and returns a frozen ``Config``. Warnings (a key that looks like a
misspelt gpumgr key; a reference in ``model-mappings.yaml``, the router's view, that names
nothing gpumgr runs) never stop a load: they travel on ``Config.warnings``, and
``inspect_config`` returns errors and warnings together for ``gpumgr validate``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gpumgr.config.cloud_key import check_cloud_key_name
from gpumgr.config.crosscheck import check_mappings, check_providers
from gpumgr.config.errors_translate import translate
from gpumgr.config.paths import (
    Paths,
    find_config_dir,
    resolve_listen,
    resolve_paths,
    resolve_simulate,
)
from gpumgr.config.registry import MappingsFile, Provider, ProvidersFile, ProviderStatus, ProviderType
from gpumgr.config.env_secrets import check_env_values, known_secrets
from gpumgr.config.load_balancing import check_load_balancing
from gpumgr.config.policy_checks import check_policies
from gpumgr.config.settings import Settings
from gpumgr.config.source import YamlSource, read_yaml
from gpumgr.config.typos import mapping_typos, provider_typos
from gpumgr.errors import ConfigError, ConfigIssue

PROVIDERS_FILE = "providers.yaml"
MAPPINGS_FILE = "model-mappings.yaml"
SETTINGS_FILE = "gpumgr.yaml"

__all__ = [
    "Config", "ConfigError", "ConfigReport", "inspect_config", "MappingsFile", "Paths", "Provider", "ProviderStatus", "ProviderType",
    "ProvidersFile", "Settings", "load_config", "find_config_dir",
]


@dataclass(frozen=True)
class Config:
    config_dir: Path
    providers_file: ProvidersFile
    mappings: MappingsFile
    settings: Settings
    paths: Paths
    listen: str
    simulate: bool
    warnings: tuple[ConfigIssue, ...] = field(default=(), compare=False)

    @property
    def providers(self) -> dict[str, Provider]:
        return self.providers_file.providers

    def provider(self, name: str) -> Provider:
        return self.providers[name]

    @property
    def vllm_providers(self) -> list[Provider]:
        return [p for p in self.providers.values() if p.is_vllm]

    def summary(self) -> str:
        """The one-line summary ``gpumgr validate`` prints."""
        providers = self.providers.values()
        models = {m for p in providers for m in p.served_names}
        return (
            f"ok: {len(self.providers)} providers ({len(self.vllm_providers)} vllm), "
            f"{len(models)} models, {len(self.mappings.fallback_chains)} chains"
        )


def _validate(
    model: type[BaseModel], src: YamlSource, issues: list[ConfigIssue], *, required: bool
) -> Any:
    if src.data is None:
        if required:
            issues.append(src.issue((), "file is empty; expected a mapping with a 'providers:' key"))
            return None
        return model.model_validate({})
    if not isinstance(src.data, dict):
        kind = "a list" if isinstance(src.data, list) else type(src.data).__name__
        issues.append(src.issue((), f"top level must be a mapping (got {kind})"))
        return None
    try:
        return model.model_validate(src.data)
    except ValidationError as exc:
        issues.extend(translate(model, src, exc))
        return None


def _read(config_dir: Path, name: str, issues: list[ConfigIssue], *, required: bool) -> YamlSource:
    path = config_dir / name
    if not path.exists():
        if required:
            issues.append(ConfigIssue(name, None, None, "", f"not found in {config_dir}"))
        return YamlSource(name, None)
    src, found = read_yaml(path, name)
    issues.extend(found)
    return src


@dataclass(frozen=True)
class ConfigReport:
    """Everything one read of the configuration found: the config when there are no errors."""

    config: Config | None
    errors: tuple[ConfigIssue, ...]
    warnings: tuple[ConfigIssue, ...]


_FILE_ORDER = {PROVIDERS_FILE: 0, MAPPINGS_FILE: 1, SETTINGS_FILE: 2}


def _sorted(issues: list[ConfigIssue]) -> tuple[ConfigIssue, ...]:
    return tuple(
        sorted(issues, key=lambda i: (_FILE_ORDER.get(i.file, 3), i.line or 0, i.column or 0))
    )


def inspect_config(
    config_dir: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    simulate: bool = False,
    dir_flags: Mapping[str, str | None] | None = None,
    listen: str | None = None,
) -> ConfigReport:
    """Load and check the three files; every error and warning found, never raising for them."""
    env = os.environ if env is None else env
    cdir = find_config_dir(str(config_dir) if config_dir else None, env, Path.cwd())
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    if not cdir.is_dir():
        missing = ConfigIssue(str(cdir), None, None, "", "configuration directory not found")
        return ConfigReport(None, (missing,), ())

    psrc = _read(cdir, PROVIDERS_FILE, issues, required=True)
    providers_readable = not issues
    msrc = _read(cdir, MAPPINGS_FILE, issues, required=False)
    ssrc = _read(cdir, SETTINGS_FILE, issues, required=False)

    pf = _validate(ProvidersFile, psrc, issues, required=True) if providers_readable else None
    mf = _validate(MappingsFile, msrc, issues, required=False)
    st = _validate(Settings, ssrc, issues, required=False)
    warnings.extend(provider_typos(psrc))
    warnings.extend(mapping_typos(msrc))

    if pf is not None:
        issues.extend(check_providers(pf, psrc))
        warnings.extend(check_cloud_key_name(pf, psrc))
        issues.extend(check_policies(pf, st, psrc))
        if mf is not None:
            mapping_errors, mapping_warnings = check_mappings(pf, mf, msrc, psrc)
            issues.extend(mapping_errors)
            warnings.extend(mapping_warnings)
    if mf is not None:
        warnings.extend(check_load_balancing(mf.load_balancing, msrc))
    if pf is not None and st is not None:
        issues.extend(check_env_values(pf, psrc, known_secrets(pf, st, env)))
    if issues:
        return ConfigReport(None, _sorted(issues), _sorted(warnings))
    assert pf is not None and mf is not None and st is not None
    paths = resolve_paths(st, env, is_root=os.geteuid() == 0, home=Path.home(), flags=dir_flags)
    cfg = Config(
        config_dir=cdir,
        providers_file=pf,
        mappings=mf,
        settings=st,
        paths=paths,
        listen=resolve_listen(st, env, listen),
        simulate=resolve_simulate(env, simulate) or st.simulate.enabled,
        warnings=_sorted(warnings),
    )
    return ConfigReport(cfg, (), cfg.warnings)


def load_config(
    config_dir: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    simulate: bool = False,
    dir_flags: Mapping[str, str | None] | None = None,
    listen: str | None = None,
) -> Config:
    """Load and check the three files; raise ``ConfigError`` with every error found."""
    report = inspect_config(
        config_dir, env=env, simulate=simulate, dir_flags=dir_flags, listen=listen
    )
    if report.config is None:
        raise ConfigError(list(report.errors))
    return report.config
