"""Where gpumgr keeps things, and how it listens: the one place that applies precedence.

Precedence, written once: command-line flag > environment variable > gpumgr.yaml > systemd's
directory variables (``$RUNTIME_DIRECTORY`` …) > ``/run/gpumgr``-style defaults for root > the
user's XDG directories.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gpumgr.config.settings import DEFAULT_LISTEN, Settings

CONFIG_DIR_ENV = "GPUMGR_CONFIG_DIR"
SIMULATE_ENV = "GPUMGR_SIMULATE"
LISTEN_ENV = "GPUMGR_LISTEN"

_DIRS = {
    # key: (gpumgr env, systemd env, root default, XDG env, XDG fallback under ~)
    "runtime_dir": ("GPUMGR_RUNTIME_DIR", "RUNTIME_DIRECTORY", "/run/gpumgr", "XDG_RUNTIME_DIR", ".cache/gpumgr/run"),
    "state_dir": ("GPUMGR_STATE_DIR", "STATE_DIRECTORY", "/var/lib/gpumgr", "XDG_STATE_HOME", ".local/state"),
    "log_dir": ("GPUMGR_LOG_DIR", "LOGS_DIRECTORY", "/var/log/gpumgr", "XDG_STATE_HOME", ".local/state"),
    "cache_dir": ("GPUMGR_CACHE_DIR", "CACHE_DIRECTORY", "/var/cache/gpumgr", "XDG_CACHE_HOME", ".cache"),
}


@dataclass(frozen=True)
class Paths:
    runtime_dir: Path
    state_dir: Path
    log_dir: Path
    cache_dir: Path

    @property
    def status_file(self) -> Path:
        return self.runtime_dir / "status.json"

    @property
    def control_socket(self) -> Path:
        return self.runtime_dir / "gpumgr.sock"


def _dir(key: str, settings: Settings, env: Mapping[str, str], flag: str | None, is_root: bool, home: Path) -> Path:
    gpumgr_env, systemd_env, root_default, xdg_env, xdg_fallback = _DIRS[key]
    chosen = flag or env.get(gpumgr_env) or getattr(settings, key)
    if chosen:
        return Path(chosen).expanduser()
    if env.get(systemd_env):
        # systemd may list several directories separated by ':'; the first is ours
        return Path(env[systemd_env].split(":")[0])
    if is_root:
        return Path(root_default)
    base = env.get(xdg_env)
    if key == "runtime_dir":
        return Path(base) / "gpumgr" if base else home / xdg_fallback
    suffix = "gpumgr/log" if key == "log_dir" else "gpumgr"
    return (Path(base) if base else home / xdg_fallback) / suffix


def resolve_paths(
    settings: Settings,
    env: Mapping[str, str],
    *,
    is_root: bool,
    home: Path,
    flags: Mapping[str, str | None] | None = None,
) -> Paths:
    flags = flags or {}
    return Paths(**{k: _dir(k, settings, env, flags.get(k), is_root, home) for k in _DIRS})


def resolve_listen(settings: Settings, env: Mapping[str, str], flag: str | None = None) -> str:
    return flag or env.get(LISTEN_ENV) or settings.listen or DEFAULT_LISTEN


def resolve_simulate(env: Mapping[str, str], flag: bool = False) -> bool:
    return flag or env.get(SIMULATE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def find_config_dir(flag: str | None, env: Mapping[str, str], cwd: Path) -> Path:
    """``--config-dir`` > ``$GPUMGR_CONFIG_DIR`` > ``/etc/gpumgr`` (when it holds a registry) > ``./config``."""
    if flag:
        return Path(flag)
    if env.get(CONFIG_DIR_ENV):
        return Path(env[CONFIG_DIR_ENV])
    etc = Path("/etc/gpumgr")
    if (etc / "providers.yaml").exists():
        return etc
    return cwd / "config"
