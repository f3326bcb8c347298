"""The I/O of ``gpumgr doctor``: read each fact with a short timeout, hand it to a pure check.

Reads run concurrently in threads (the slowest is ``vllm --version``, which imports torch), and
every one is bounded, so the report comes back in seconds even when a service hangs. Nothing
here writes, starts or stops anything; the only remote calls are Ollama's ``/api/version`` and
``/api/ps``, one ``GET /api/tags`` on Ollama Cloud, and, for a repository whose weights are not
on disk and no token is set, one metadata request to the hub asking whether it is gated.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import psutil

from gpumgr.config import Config, inspect_config
from gpumgr.config.hosts import is_loopback
from gpumgr.config.paths import resolve_paths
from gpumgr.config.registry import Provider, ProviderStatus, ProviderType
from gpumgr.config.settings import DEFAULT_LISTEN, Settings
from gpumgr.doctor import Check, Report, fail, ok
from gpumgr.doctor.checks_host import (
    AwqUser,
    Listener,
    VersionProbe,
    check_compute,
    check_daemon,
    check_driver,
    check_litellm,
    check_litellm_cloud_key,
    check_port,
    check_socket,
    check_systemd,
    check_vllm,
)
from gpumgr.doctor.checks_services import (
    WeightsNeed,
    check_cloud,
    check_disk,
    check_hf_token,
    check_ollama_placement,
    check_ollama_reachable,
    check_ollama_settings,
    check_weights,
)
from gpumgr.errors import GpumgrError
from gpumgr.gpu import GpuBackend, GpuInventory
from gpumgr.redaction import redact
from gpumgr.secrets import read_secret_with_source

LITELLM_CONFIG_ENV = "LITELLM_CONFIG"
VLLM_VERSION_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 3.0
SYSTEMCTL_TIMEOUT_S = 5.0
GIB = 1024**3
T = TypeVar("T")


@dataclass(frozen=True)
class DoctorOptions:
    config_dir: str | None = None
    litellm_config: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    gpu_backend: GpuBackend | None = None
    """Default: NVML (the simulated card when the configuration says ``simulate``)."""
    systemctl: str | None = "systemctl"
    """The executable name looked up on PATH (tests point it at a fake); None: skip systemd."""


# -- fact readers (each bounded, none raises) ----------------------------------------------------


def _one_line(text: str, limit: int = 160) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def vllm_version(argv: Sequence[str], env: Mapping[str, str],
                 cache: Path | None = None) -> VersionProbe:
    """``<vllm> --version`` with a timeout, as an argument list (never through a shell);
    with ``cache`` (the daemon's ``<state_dir>/vllm-versions.json``) an answer for the same
    executable and modification time is reused."""
    if cache is not None:
        from gpumgr.engines.vllm_version import VllmVersions

        a = VllmVersions(cache, VLLM_VERSION_TIMEOUT_S).answer(argv, env)
        return VersionProbe(a.argv, a.found, a.version, a.error)
    exe = argv[0]
    resolved = shutil.which(exe, path=env.get("PATH")) if os.sep not in exe else (
        exe if os.access(exe, os.X_OK) else None)
    if resolved is None:
        return VersionProbe(tuple(argv), found=False)
    try:
        done = subprocess.run([*argv, "--version"], capture_output=True, text=True,
                              timeout=VLLM_VERSION_TIMEOUT_S, env=dict(env),
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return VersionProbe(tuple(argv), True, error=f"no answer in {VLLM_VERSION_TIMEOUT_S:g} s")
    except OSError as exc:
        return VersionProbe(tuple(argv), True, error=str(exc))
    lines = [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]
    if done.returncode == 0 and lines:
        return VersionProbe(tuple(argv), True, version=lines[-1])
    err = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return VersionProbe(tuple(argv), True, error=_one_line(f"exit {done.returncode}: {err}"))


def tcp_listeners() -> dict[int, Listener]:
    """port -> who listens (pid None when the kernel hides another user's process)."""
    out: dict[int, Listener] = {}
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return out
    for c in conns:
        if c.status != psutil.CONN_LISTEN or not c.laddr:
            continue
        name = ""
        if c.pid is not None:
            try:
                name = psutil.Process(c.pid).name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        prev = out.get(c.laddr.port)
        if prev is None or prev.pid is None:
            out[c.laddr.port] = Listener(c.pid, name)
    return out


def process_env(pid: int | None) -> dict[str, str] | None:
    if pid is None:
        return None
    try:
        return dict(psutil.Process(pid).environ())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None


def http_json(url: str, headers: Mapping[str, str] | None = None,
              timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int | None, Any, str | None]:
    """(status, parsed JSON or None, error) of one GET; never raises."""
    try:
        r = httpx2.get(url, headers=dict(headers or {}), timeout=timeout_s)
    except httpx2.HTTPError as exc:
        return None, None, _one_line(f"{type(exc).__name__}: {exc}" if str(exc) else
                                     type(exc).__name__)
    try:
        body = r.json()
    except ValueError:
        body = None
    return r.status_code, body, None


def systemctl_state(exe: str | None, env: Mapping[str, str]) -> tuple[bool, str | None, str | None]:
    """(systemctl present, is-active, is-enabled) for gpumgr.service."""
    path = shutil.which(exe, path=env.get("PATH")) if exe else None
    if path is None:
        return False, None, None

    def ask(verb: str) -> str | None:
        try:
            done = subprocess.run([path, verb, "gpumgr.service"], capture_output=True, text=True,
                                  timeout=SYSTEMCTL_TIMEOUT_S, stdin=subprocess.DEVNULL,
                                  check=False, env=dict(env))
        except (subprocess.TimeoutExpired, OSError):
            return None
        out = done.stdout.strip().splitlines()
        return out[0].strip() if out else None

    return True, ask("is-active"), ask("is-enabled")


def socket_connects(path: Path) -> str | None:
    """None when a unix-socket connect succeeds, else why not."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def lock_pid(state_dir: Path) -> int | None:
    try:
        text = (state_dir / "daemon.lock").read_text().strip()
    except OSError:
        return None
    pid = int(text) if text.isdigit() else None
    return pid if pid is not None and psutil.pid_exists(pid) else None


def hub_gated(repo: str, endpoint: str) -> tuple[bool | None, str | None]:
    """Whether the hub says ``repo`` is gated (one metadata request, no token sent)."""
    try:
        import gpumgr.weights.hubclient  # noqa: F401 - switches off telemetry and implicit tokens
        from huggingface_hub import HfApi

        info = HfApi(endpoint=endpoint, token=False).model_info(repo, timeout=HTTP_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any hub failure is "could not ask"
        return None, _one_line(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return bool(info.gated), None


# -- the run -------------------------------------------------------------------------------------


class _Pool:
    """Submit readers up front, collect results in report order."""

    def __init__(self) -> None:
        self.ex = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gpumgr-doctor")

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self.ex.submit(fn, *args)

    def close(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


def _local_url(p: Provider) -> bool:
    return p.base_url is not None and is_loopback(p.host)


def _config_checks(options: DoctorOptions) -> tuple[Config | None, list[Check]]:
    report = inspect_config(options.config_dir, env=options.env)
    if report.config is None:
        first = "; ".join(str(e) for e in report.errors[:3])
        more = f" (+{len(report.errors) - 3} more)" if len(report.errors) > 3 else ""
        return None, [fail("config", f"{len(report.errors)} error(s): {first}{more}",
                           "`gpumgr validate` lists every one with file and line")]
    cfg = report.config
    summary = cfg.summary().removeprefix("ok: ") + f" in {cfg.config_dir}"
    if report.warnings:
        summary += f"; {len(report.warnings)} warning(s) (`gpumgr validate`)"
    return cfg, [ok("config", summary)]


def _default_listen_and_paths(env: Mapping[str, str]) -> tuple[str, Any]:
    settings = Settings()
    paths = resolve_paths(settings, env, is_root=os.geteuid() == 0, home=Path.home())
    return env.get("GPUMGR_LISTEN") or DEFAULT_LISTEN, paths


def run_doctor(options: DoctorOptions) -> Report:
    t0 = time.monotonic()
    env = options.env
    cfg, checks = _config_checks(options)
    if cfg is not None:
        listen, paths, settings = cfg.listen, cfg.paths, cfg.settings
        providers = [p for p in cfg.providers.values() if p.runs_here]
    else:
        (listen, paths), settings, providers = _default_listen_and_paths(env), Settings(), []
    vllm_ps = [p for p in providers if p.is_vllm]
    pool = _Pool()
    try:
        backend = options.gpu_backend
        if backend is None:
            from gpumgr.cli.plan_inputs import open_backend

            backend = open_backend(cfg, bool(cfg and cfg.simulate))
        f_inv: Future[GpuInventory] = pool.submit(backend.read)
        f_versions: dict[tuple[str, ...], Future[VersionProbe]] = {}
        argv_of: dict[str, tuple[str, ...]] = {}
        for p in vllm_ps:
            try:
                from gpumgr.engines.vllm import resolve_vllm_command

                argv = tuple(resolve_vllm_command(p, settings.vllm))
            except GpumgrError as exc:
                checks.append(fail(f"vllm.{p.name}", str(exc), "fix vllm.command in gpumgr.yaml"))
                continue
            argv_of[p.name] = argv
            if argv not in f_versions:
                from gpumgr.engines.vllm_version import CACHE_FILE

                f_versions[argv] = pool.submit(vllm_version, argv, env,
                                               paths.state_dir / CACHE_FILE)
        f_listeners = pool.submit(tcp_listeners)
        f_systemd = pool.submit(systemctl_state, options.systemctl, env)
        f_health = pool.submit(http_json, f"http://{listen}/healthz")
        ollamas = [p for p in providers if p.type is ProviderType.OLLAMA]
        f_ollama = {p.name: (pool.submit(http_json, _join(p, "/api/version")),
                             pool.submit(http_json, _join(p, "/api/ps"))) for p in ollamas}
        clouds = [p for p in providers if p.type is ProviderType.OLLAMA_CLOUD]
        f_cloud: dict[str, tuple[str | None, Future[tuple[int | None, Any, str | None]] | None]] = {}
        for p in clouds:
            secret = read_secret_with_source(p.env_var, env)
            fut = None
            if secret is not None:
                fut = pool.submit(http_json, _join(p, "/api/tags", "https://ollama.com"),
                                  {"Authorization": f"Bearer {secret.value}"}, 5.0)
            f_cloud[p.name] = (secret.source if secret else None, fut)
        weights = _weights_facts(cfg, vllm_ps, env, pool) if cfg is not None else None

        # -- collect, in report order
        inv = f_inv.result()
        checks += check_driver(inv)
        versions = {name: f_versions[argv].result() for name, argv in argv_of.items()}
        for g in inv.gpus:
            users = [AwqUser(p.name, versions[p.name].version if p.name in versions else None,
                             p.effective_quantization)
                     for p in vllm_ps if p.gpu == g.index and "awq" in
                     (p.effective_quantization or "awq").lower()]
            checks.append(check_compute(g, users))
        for name in argv_of:
            checks.append(check_vllm(name, versions[name]))
        checks += _release_checks(cfg, vllm_ps, versions, inv)
        checks += _port_checks(cfg, providers, listen, paths, f_listeners.result())
        status, body, err = f_health.result()
        healthz = body if status == 200 and isinstance(body, dict) else None
        if status is not None and healthz is None:
            err = f"HTTP {status}"
        checks.append(check_daemon(listen, healthz, err, lock_pid(paths.state_dir)))
        sock = paths.control_socket
        exists = sock.exists()
        checks.append(check_socket(str(sock), exists, socket_connects(sock) if exists else None,
                                   healthz is not None))
        has, active, enabled = f_systemd.result()
        checks.append(check_systemd(has, active, enabled))
        listeners = f_listeners.result()
        for p in ollamas:
            fv, fps = f_ollama[p.name]
            st, vbody, verr = fv.result()
            version = str(vbody.get("version")) if st == 200 and isinstance(vbody, dict) else None
            url = p.base_url or "http://127.0.0.1:11434"
            active_p = p.status is ProviderStatus.ACTIVE
            checks.append(check_ollama_reachable(p.name, url, version,
                                                 verr or (f"HTTP {st}" if st else None), active_p))
            if version is None:
                continue
            lst = listeners.get(p.port or 11434) if _local_url(p) else None
            eviction = settings.ollama.eviction
            checks.append(check_ollama_settings(p.name, process_env(lst.pid if lst else None),
                                                eviction))
            pst, pbody, _ = fps.result()
            models = pbody.get("models") if pst == 200 and isinstance(pbody, dict) else None
            checks.append(check_ollama_placement(p.name, models if isinstance(models, list)
                                                 else None))
        for p in clouds:
            source, fut = f_cloud[p.name]
            if fut is None:
                checks.append(check_cloud(p.name, p.env_var, None, None, None, None))
                continue
            st, body, err = fut.result()
            n = len(body.get("models") or []) if isinstance(body, dict) else None
            secret_value = read_secret_with_source(p.env_var, env)
            if err and secret_value:
                err = redact(err, [secret_value.value])
            checks.append(check_cloud(p.name, p.env_var, source, st, err, n))
        if weights is not None:
            checks += weights()
        if options.litellm_config or env.get(LITELLM_CONFIG_ENV):
            path = options.litellm_config or env[LITELLM_CONFIG_ENV]
            try:
                text: str | None = Path(path).read_text(encoding="utf-8")
                read_err = None
            except OSError as exc:
                text, read_err = None, exc.strerror or str(exc)
            checks.append(check_litellm(path, text, read_err))
            if (leak := check_litellm_cloud_key(path, text)) is not None:
                checks.append(leak)
    finally:
        pool.close()
    return Report(tuple(checks), time.monotonic() - t0)


def _release_checks(cfg: Config | None, vllm_ps: Sequence[Provider],
                    versions: Mapping[str, VersionProbe], inv: GpuInventory) -> list[Check]:
    """Each vLLM provider against its own release (flags, memory model, Turing rules), and
    the unauthenticated engine endpoints."""
    from gpumgr.config.source import YamlSource
    from gpumgr.config.vllm_checks import check_vllm_provider, provider_release
    from gpumgr.doctor.checks_vllm import check_card, check_endpoints, check_release
    from gpumgr.engines.vllm import sleep_mode
    from gpumgr.vllm_tables.rules import card_findings

    if cfg is None or not vllm_ps:
        return []
    out: list[Check] = []
    releases = []
    src = YamlSource("providers.yaml", {})
    for p in vllm_ps:
        probe = versions.get(p.name)
        release = provider_release(p, probe.version if probe else None)
        releases.append(release)
        issues = [i.message for i in check_vllm_provider(p, src, release)]
        out.append(check_release(p.name, release, issues))
        gpu = next((g for g in inv.gpus if g.index == p.gpu), None)
        cc = parse_cc(gpu.compute_capability if gpu else None)
        if gpu is not None and cc is not None:
            described = (p.effective_quantization or "").strip().lower()
            method = p.quantization or (
                described if described in release.flags.quantization_methods else None)
            findings = card_findings(p.extra_args, method, release, cc, gpu.name)
            out.append(check_card(p.name, findings, gpu.compute_capability or "?"))
    out.append(check_endpoints(releases, any(sleep_mode(p, cfg.settings.vllm) for p in vllm_ps)))
    return out


def parse_cc(text: str | None) -> tuple[int, int] | None:
    major, _, minor = (text or "").partition(".")
    return (int(major), int(minor or 0)) if major.isdigit() and (minor or "0").isdigit() else None


def _join(p: Provider, path: str, default: str = "http://127.0.0.1:11434") -> str:
    return (p.base_url or default).rstrip("/") + path


def _port_checks(cfg: Config | None, providers: Sequence[Provider], listen: str, paths: Any,
                 listeners: Mapping[int, Listener]) -> list[Check]:
    from gpumgr.supervisor.records import ChildRecords

    ours = {r.pid: b for b, r in ChildRecords(paths.state_dir).load().items()}
    daemon_pid = lock_pid(paths.state_dir)
    ports: dict[int, tuple[str, list[str]]] = {}
    host, _, port_text = listen.rpartition(":")
    if port_text.isdigit() and int(port_text) > 0:
        ports[int(port_text)] = ("status", ["status listener"])
    for p in providers:
        if p.port is None or not _local_url(p):
            continue
        kind = "vllm" if p.is_vllm else "ollama" if p.type is ProviderType.OLLAMA else None
        if kind is None:
            continue
        ports.setdefault(p.port, (kind, []))[1].append(p.name)
    return [check_port(port, users, kind, listeners.get(port), ours, daemon_pid)
            for port, (kind, users) in sorted(ports.items())]


def _weights_facts(cfg: Config, vllm_ps: Sequence[Provider], env: Mapping[str, str],
                   pool: _Pool) -> Callable[[], list[Check]]:
    """Hub token, disk and weights checks; the gated look-ups run in the pool meanwhile."""
    from gpumgr.errors import WeightsInputError
    from gpumgr.weights import hub_cache_dir, local_snapshot, offline_from_env, resolve_endpoint, resolve_token
    from gpumgr.weights.cache import disk_free_bytes, storage_dir

    hub_dir = hub_cache_dir(cfg.paths.cache_dir, simulate=cfg.simulate)
    offline = offline_from_env(env)
    token_check: Check | None = None
    try:
        token = resolve_token(cfg.settings.hub, env)
        token_source = token.source if token else None
    except WeightsInputError as exc:
        token_source = None
        token_check = fail("hf.token", str(exc), "fix HF_TOKEN_PATH or hub.token_file")
    endpoint = resolve_endpoint(cfg.settings.hub, env)
    facts: list[tuple[Provider, str, Any, bool]] = []
    gated: dict[str, Future[tuple[bool | None, str | None]]] = {}
    for p in vllm_ps:
        repo = p.hf_repo
        if repo is None:
            continue
        snap = local_snapshot(p, hub_dir)
        partial = snap is None and storage_dir(hub_dir, repo).exists()
        facts.append((p, repo, snap, partial))
        if snap is None and token_source is None and not offline and repo not in gated:
            gated[repo] = pool.submit(hub_gated, repo, endpoint)

    def collect() -> list[Check]:
        out: list[Check] = [token_check] if token_check else []
        needs: list[WeightsNeed] = []
        for p, repo, snap, partial in facts:
            g, gerr = gated[repo].result() if repo in gated else (None, None)
            out.append(check_hf_token(p.name, repo, token_source, snap is not None, g, offline,
                                      gerr))
        try:
            free: int | None = disk_free_bytes(cfg.paths.cache_dir)
        except OSError:
            free = None
        for p, repo, snap, partial in facts:
            size = p.vllm_model.model_size_gb if p.vllm_model else None
            missing = 0 if snap is not None else (int(size * GIB) if size else None)
            needs.append(WeightsNeed(p.name, p.status is ProviderStatus.ACTIVE, missing))
        out.append(check_disk(str(cfg.paths.cache_dir), free, needs,
                              cfg.settings.hub.disk_margin_mib * 1024 * 1024))
        for p, repo, snap, partial in facts:
            out.append(check_weights(p.name, repo, (snap.commit, snap.total_bytes) if snap else
                                     None, partial, offline, p.status is ProviderStatus.ACTIVE))
        return out

    return collect


def report_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)
