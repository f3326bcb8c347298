"""Typed model of ``gpumgr.yaml``, the daemon's own settings (every key optional).

Unlike the user's registry, this is gpumgr's own file: unknown keys are errors (with a
"did you mean" hint, added by the loader). Each section belongs to the module that acts on it;
the constants' sources are documented where they are used.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_LISTEN = "127.0.0.1:9400"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HealthSettings(_Section):
    """Probe scheduling (see ``gpumgr.health``). The registry's ``health_checks:`` fills gaps."""

    interval_s: float | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    retry_attempts: int | None = Field(default=None, ge=1)
    cloud_interval_s: float = Field(default=60.0, gt=0)
    engine_interval_s: float = Field(default=0.5, gt=0)
    """Probe interval of the vLLM engines gpumgr runs (loopback, cheap): a hung engine is
    ``suspect`` (skipped by the router) within about interval + timeout. ``interval_s`` here
    overrides it; the registry's ``health_checks`` applies to the other backends."""
    engine_timeout_s: float = Field(default=0.5, gt=0)
    """Probe timeout of the managed vLLM engines (``timeout_s`` here overrides it)."""
    starting_poll_s: float = Field(default=0.25, gt=0)
    busy_waiting_threshold: int = Field(default=4, ge=0)
    """``busy`` when vLLM's ``vllm:num_requests_waiting`` is above this."""
    jitter_s: float = Field(default=0.1, ge=0)
    """Random delay added to each probe (APScheduler ``jitter``); detection may take this longer."""
    cloud_backoff_cap_s: float = Field(default=3600.0, gt=0)
    """Longest wait between cloud probes while rate-limited (429s back off exponentially)."""
    restart_unresponsive_after_s: float | None = Field(default=30.0, gt=0)
    """A managed vLLM server that stays ``down`` this long while its process lives (hung) is
    restarted; null turns that off."""


class GpuSettings(_Section):
    reserve_mib: int = Field(default=256, ge=0)


class PlannerSettings(_Section):
    """Overrides of the planner's named constants (see ``gpumgr.plan`` for each one's source)."""

    cuda_context_mib: int | None = Field(default=None, ge=0)
    activation_mib: int | None = Field(default=None, ge=0)
    cuda_graph_mib: int | None = Field(default=None, ge=0)
    safety_margin_mib: int | None = Field(default=None, ge=0)
    default_max_model_len: int | None = Field(default=None, gt=0)
    default_max_num_seqs: int | None = Field(default=None, gt=0)


class VllmSettings(_Section):
    command: str = "vllm"
    start_timeout_s: float = Field(default=900.0, gt=0)
    stop_timeout_s: float = Field(default=30.0, gt=0)
    memory_release_timeout_s: float = Field(default=30.0, gt=0)
    log_max_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    log_backups: int = Field(default=3, ge=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    """How long a stop or swap waits for in-flight requests to finish before SIGTERM."""
    swap_mode: Literal["restart", "sleep"] = "restart"
    """The default of each provider's ``swap_mode``."""


class RestartSettings(_Section):
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_cap_s: float = Field(default=60.0, gt=0)
    max_crashes: int = Field(default=5, ge=1)
    window_s: float = Field(default=300.0, gt=0)


class OllamaSettings(_Section):
    reservation_mib: int = Field(default=0, ge=0)
    eviction: Literal["never", "unload_idle", "unload_all"] = "unload_idle"


class HubSettings(_Section):
    endpoint: str | None = None
    token_file: str | None = None
    disk_margin_mib: int = Field(default=1024, ge=0)
    max_workers: int = Field(default=4, ge=1, le=32)
    """Files downloaded in parallel by one pull."""
    timeout_s: float = Field(default=10.0, gt=0)
    """Per-request connect/metadata timeout towards the hub."""
    lock_timeout_s: float | None = Field(default=None, gt=0)
    """How long a pull waits for another download of the same repo; default: until it ends."""


class SimGpuConfig(_Section):
    name: str = "Quadro RTX 5000"
    memory_total_mib: int = Field(default=16384, gt=0)
    display_used_mib: int = Field(default=300, ge=0)
    compute_capability: str = "7.5"


class SimulateSettings(_Section):
    """The simulated GPU and engines used by ``--simulate``, ``GPUMGR_SIMULATE=1`` and ``demo``."""

    enabled: bool = False
    """Simulate without the flag or the variable (the demo's workspace sets it, so that its
    config directory alone points every command at the simulated box)."""
    gpus: list[SimGpuConfig] = Field(default_factory=lambda: [SimGpuConfig()])
    load_seconds: float | None = Field(default=None, ge=0)
    """Fixed simulated engine load time; default derives it from the weights size."""
    hub_endpoint: str | None = None
    """A running simulated hub; default starts one."""
    vllm_version: str | None = Field(default=None, pattern=r"^\d+\.\d+(\.\d+)?$")
    """The vLLM release the simulated engine imitates (its flags, its memory model, its
    ``--version``); default 0.33.0 (``GPUMGR_SIM_VLLM_VERSION`` wins)."""


class ControlSettings(_Section):
    """Who may start and stop models. The unix socket (``<runtime_dir>/gpumgr.sock``, mode 0660)
    is the control channel; the TCP listener stays read-only unless a token is configured."""

    socket_group: str | None = None
    """Group that owns the socket (its members may control gpumgr); default: the daemon's."""
    token_file: str | None = None
    """A file holding the bearer token that also allows control calls on the TCP listener
    (else the secret ``GPUMGR_CONTROL_TOKEN``: the environment or a systemd credential)."""


class DemandSettings(_Section):
    """The numbers of the demand policy (providers with ``policy: demand``; docs/policies.md)."""

    min_residency_s: float = Field(default=300.0, ge=0)
    """A model swapped in stays at least this long before the policy swaps it out again."""
    window_s: float = Field(default=120.0, gt=0)
    """Demand is counted over this many past seconds (missed requests for the wanted model,
    finished requests of the resident one)."""
    margin: float = Field(default=0.2, ge=0, lt=1)
    """Hysteresis: the wanted model's share of the window's requests must exceed the
    resident's share by more than this (0.2: at least 60 % against 40 %)."""
    min_requests: int = Field(default=3, ge=1)
    """Fewer missed requests than this in the window never swap (one stray request does not)."""
    max_swaps_per_hour: int = Field(default=6, ge=0)
    """At most this many policy swaps on one card in any 60 minutes (0: none)."""


class PolicySettings(_Section):
    """Lifecycle policies (docs/policies.md): how often they look, and the demand numbers."""

    check_interval_s: float = Field(default=1.0, gt=0)
    """How often the idle timers and the demand policy are evaluated."""
    demand: DemandSettings = Field(default_factory=DemandSettings)


class Settings(_Section):
    listen: str = DEFAULT_LISTEN
    runtime_dir: str | None = None
    state_dir: str | None = None
    log_dir: str | None = None
    cache_dir: str | None = None
    health: HealthSettings = Field(default_factory=HealthSettings)
    gpu: GpuSettings = Field(default_factory=GpuSettings)
    planner: PlannerSettings = Field(default_factory=PlannerSettings)
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    restart: RestartSettings = Field(default_factory=RestartSettings)
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    hub: HubSettings = Field(default_factory=HubSettings)
    simulate: SimulateSettings = Field(default_factory=SimulateSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    policies: PolicySettings = Field(default_factory=PolicySettings)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be HOST:PORT with a port 0-65535 (got {v!r})")
        return v
