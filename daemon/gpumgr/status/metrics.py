"""Prometheus view of the status document, on a registry of its own.

Gauges and counters are not kept in parallel with the document (two copies drift): a collector
reads the current document at scrape time, so ``/metrics`` says exactly what ``/v1/status``
says, and a removed backend or GPU process disappears from both. Only the probe latency, a
distribution over time that the document does not hold, is a real ``Histogram``.

The registry is not prometheus-client's global one, so several daemons in one test process (or
a library user's own metrics) never collide.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpumgr.backend_state import BackendState
from gpumgr.status.document import StatusDocument

MIB_BYTES = 1024 * 1024

PROBE_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Local probes answer in milliseconds; the cloud in hundreds; the top buckets catch timeouts."""


class _DocumentCollector(Collector):
    def __init__(self, document: Callable[[], StatusDocument]) -> None:
        self._document = document

    def collect(self) -> Iterator[Metric]:
        doc = self._document()
        up = GaugeMetricFamily(
            "gpumgr_backend_up", "1 when the backend takes requests (state up)", labels=["backend", "type"]
        )
        state = GaugeMetricFamily(
            "gpumgr_backend_state",
            "1 for the backend's current state, 0 for the others",
            labels=["backend", "state"],
        )
        restarts = CounterMetricFamily(
            "gpumgr_backend_restarts", "Restarts of the backend by gpumgr", labels=["backend"]
        )
        for b in doc.backends:
            up.add_metric([b.name, b.type], 1.0 if b.available else 0.0)
            for s in BackendState:
                state.add_metric([b.name, s.value], 1.0 if s is b.state else 0.0)
            restarts.add_metric([b.name], float(b.restarts))
        yield up
        yield state
        yield restarts

        total = GaugeMetricFamily("gpumgr_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        used = GaugeMetricFamily("gpumgr_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        free = GaugeMetricFamily("gpumgr_gpu_memory_free_bytes", "GPU memory free", labels=["gpu"])
        per_owner = GaugeMetricFamily(
            "gpumgr_gpu_process_memory_bytes",
            "GPU memory held by processes, summed per owner (backend name, ollama, other)",
            labels=["gpu", "owner"],
        )
        for gpu in doc.gpus:
            label = str(gpu.index)
            total.add_metric([label], float(gpu.memory_total_mib * MIB_BYTES))
            used.add_metric([label], float(gpu.memory_used_mib * MIB_BYTES))
            free.add_metric([label], float(gpu.memory_free_mib * MIB_BYTES))
            sums_mib: dict[str, int] = {}
            for proc in gpu.processes:
                if proc.used_mib is not None:
                    sums_mib[proc.owner] = sums_mib.get(proc.owner, 0) + proc.used_mib
            for owner, mib in sums_mib.items():
                per_owner.add_metric([label, owner], float(mib * MIB_BYTES))
        yield total
        yield used
        yield free
        yield per_owner


class StatusMetrics:
    """The daemon's Prometheus metrics: the document's view plus the probe-latency histogram,
    followed by what ``add_renderer`` adds (the lifecycle metrics' cached text)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, document: Callable[[], StatusDocument]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_DocumentCollector(document))
        self._probe_latency = Histogram(
            "gpumgr_probe_latency_seconds",
            "Time a health probe took to answer",
            labelnames=["backend"],
            buckets=PROBE_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._renderers: list[Callable[[], bytes]] = []

    def add_renderer(self, render: Callable[[], bytes]) -> None:
        """More exposition text, appended to every scrape (metric families of its own)."""
        self._renderers.append(render)

    def observe_probe(self, backend: str, latency_s: float) -> None:
        self._probe_latency.labels(backend=backend).observe(latency_s)

    def forget_backend(self, backend: str) -> None:
        """Drop a removed backend's histogram series."""
        try:
            self._probe_latency.remove(backend)
        except KeyError:
            pass

    def render(self) -> bytes:
        """The text exposition format served on ``GET /metrics``."""
        out = generate_latest(self.registry)
        return out + b"".join(r() for r in self._renderers) if self._renderers else out


# -- lifecycle metrics (issue 20) ------------------------------------------------------------
# Buckets fit the figures gpumgr sees: a swap on one card takes 5 s (sleep mode) to a few
# minutes (a 14B cold start); a cold start 20 s to 10 min; a wake 0.5–10 s; a drain is bounded by
# ``drain_timeout_s`` (30 s by default); a death is seen in milliseconds (the supervisor's wait),
# a hang after ``interval_s × retry_attempts`` (6 s by default).
SWAP_BUCKETS_S = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
COLD_START_BUCKETS_S = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)
WAKE_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
DRAIN_BUCKETS_S = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
DETECTION_BUCKETS_S = (0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
ESTIMATE_ERROR_BUCKETS_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

RESTART_REASONS = ("crash", "oom", "hang", "reload")
SWAP_OUTCOMES = ("ok", "failed", "rolled_back")


@dataclass(frozen=True)
class OperationRecord:
    """One control operation as the metrics see it (``classify_operation``'s answer)."""

    kind: str
    """start, stop, restart, sleep, wake, swap."""
    mode: str
    """For a swap: make_before_break, break_before_make, sleep, or unknown (it failed before
    saying); ``-`` for the others."""
    outcome: str
    """ok, failed, or rolled_back (the old model is back after the new one failed)."""
    seconds: float
    backends: tuple[str, ...]
    timings_s: Mapping[str, float]


def classify_operation(
    what: str, ok: bool, seconds: float, timings_s: Mapping[str, float] | None, text: str
) -> OperationRecord:
    """Read an operation's mode and outcome from what the control API already has: the claim
    (``"swap a → b"``), the ``Outcome``'s timings and message, or the error's text.

    Pure string reading, because the operator's ``Outcome`` carries no structured mode; the
    operator's wording ("make-before-break", "(sleep mode)", "… is back") is pinned by tests."""
    words = what.split()
    kind = words[0] if words else "unknown"
    backends = tuple(w for w in words[1:] if w != "→")
    timings = dict(timings_s or {})
    if ok:
        outcome = "ok"
    elif kind == "swap" and text.rstrip().endswith("is back"):
        outcome = "rolled_back"
    else:
        outcome = "failed"
    mode = "-"
    if kind == "swap":
        if "sleep" in timings or "wake" in timings or "(sleep mode)" in text:
            mode = "sleep"
        elif "make-before-break" in text:
            mode = "make_before_break"
        elif ok:
            mode = "break_before_make"
        else:
            mode = "unknown"
    total = timings.get("total", seconds)
    return OperationRecord(kind, mode, outcome, total, backends, timings)


@dataclass(frozen=True)
class LoadedModelView:
    """One model Ollama holds (``/api/ps``): its size and how much of it is in VRAM."""

    name: str
    size_bytes: int
    vram_bytes: int


@dataclass(frozen=True)
class LifecycleView:
    """What the lifecycle collector reads at scrape time (built by the status wiring)."""

    desired_up: Mapping[str, bool] = field(default_factory=dict)
    """Backend → whether gpumgr means it to serve now (asleep or stopped on purpose: False)."""
    gpu_of: Mapping[str, int] = field(default_factory=dict)
    """Backend → the GPU index it is planned on (local engines only)."""
    state_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(backend, state) → seconds spent in it since the daemon started, the current stay included."""
    ollama_loaded: Mapping[str, tuple[LoadedModelView, ...]] = field(default_factory=dict)
    """Ollama backend → the models its last probe found loaded."""


class _LifecycleCollector(Collector):
    """Desired-vs-observed, time per state, VRAM planned vs used, Ollama residency: read at
    scrape time from the document and the wiring's view (no copy that could drift)."""

    def __init__(
        self, document: Callable[[], StatusDocument], view: Callable[[], LifecycleView]
    ) -> None:
        self._document = document
        self._view = view

    def collect(self) -> Iterator[Metric]:
        doc, view = self._document(), self._view()
        desired = GaugeMetricFamily(
            "gpumgr_backend_desired_up",
            "1 when gpumgr means the backend to serve now (0: stopped or asleep on purpose)",
            labels=["backend", "type"],
        )
        for b in doc.backends:
            desired.add_metric([b.name, b.type], 1.0 if view.desired_up.get(b.name) else 0.0)
        yield desired

        checked = GaugeMetricFamily(
            "gpumgr_backend_last_check_timestamp_seconds",
            "When the backend was last probed (Unix time); a stale one means probes stopped",
            labels=["backend"],
        )
        for b in doc.backends:
            if b.last_check is not None:
                checked.add_metric([b.name], b.last_check.timestamp())
        yield checked

        in_state = CounterMetricFamily(
            "gpumgr_backend_state_seconds",
            "Seconds each backend has spent in each state since the daemon started",
            labels=["backend", "state"],
        )
        for (backend, state), seconds in sorted(view.state_seconds.items()):
            in_state.add_metric([backend, state], seconds)
        yield in_state

        planned = GaugeMetricFamily(
            "gpumgr_backend_vram_planned_bytes",
            "GPU memory the plan gives the engine (its gpu_memory_utilization × the card's memory)",
            labels=["backend", "gpu"],
        )
        used = GaugeMetricFamily(
            "gpumgr_backend_vram_used_bytes",
            "GPU memory the engine's processes hold, from NVML's per-process attribution",
            labels=["backend", "gpu"],
        )
        gpus = {g.index: g for g in doc.gpus}
        for b in doc.backends:
            index = view.gpu_of.get(b.name)
            gpu = gpus.get(index) if index is not None else None
            if gpu is None or b.pid is None:
                continue
            label = str(gpu.index)
            if b.gpu_memory_utilization is not None:
                planned.add_metric(
                    [b.name, label], float(int(b.gpu_memory_utilization * gpu.memory_total_mib))
                    * MIB_BYTES)
            held = [p.used_mib for p in gpu.processes if p.owner == b.name and p.used_mib is not None]
            if held:
                used.add_metric([b.name, label], float(sum(held) * MIB_BYTES))
        yield planned
        yield used

        size = GaugeMetricFamily(
            "gpumgr_ollama_model_size_bytes", "Memory an Ollama model takes when loaded",
            labels=["backend", "model"])
        vram = GaugeMetricFamily(
            "gpumgr_ollama_model_vram_bytes", "Of it, the part Ollama placed in GPU memory",
            labels=["backend", "model"])
        cpu = GaugeMetricFamily(
            "gpumgr_ollama_model_cpu_ratio",
            "Share of a loaded Ollama model that runs on the CPU (size_vram < size: spilled)",
            labels=["backend", "model"])
        for backend, models in sorted(view.ollama_loaded.items()):
            for m in models:
                size.add_metric([backend, m.name], float(m.size_bytes))
                vram.add_metric([backend, m.name], float(m.vram_bytes))
                share = 1.0 - m.vram_bytes / m.size_bytes if m.size_bytes > 0 else 0.0
                cpu.add_metric([backend, m.name], round(max(0.0, share), 4))
        yield size
        yield vram
        yield cpu


class LifecycleMetrics:
    """Distributions and counts of what happened to the backends (swaps, starts, wakes, drains,
    detections, restarts, start-time estimates), plus the scrape-time lifecycle view.

    Everything is observed from the state machine's transitions and the supervisor's events by
    ``gpumgr.status.lifecycle``, and from the control API's operation outcomes, not from hooks
    inside the actions.

    The histograms and counters change only when something happens, so they live on a registry
    of their own whose text is rendered once per change and served from that cache: a scrape
    pays for the scrape-time view only (bench/metrics.py). Every observation goes through a
    method here, which is what invalidates the cache."""

    def __init__(
        self,
        status: StatusMetrics,
        document: Callable[[], StatusDocument],
        view: Callable[[], LifecycleView],
    ) -> None:
        status.registry.register(_LifecycleCollector(document, view))
        registry = self.registry = CollectorRegistry(auto_describe=False)
        self._text: bytes | None = None
        status.add_renderer(self.render)
        self.swap = Histogram(
            "gpumgr_swap_duration_seconds",
            "Time a swap took, from the request to the new model serving (or the failure)",
            labelnames=["mode", "outcome"], buckets=SWAP_BUCKETS_S, registry=registry)
        self.swaps = Counter(
            "gpumgr_swaps",
            "Swaps by outcome: ok, failed, rolled_back (the old model is back)",
            labelnames=["outcome"], registry=registry)
        for outcome in SWAP_OUTCOMES:  # present at 0, so increase() sees the first failure
            self.swaps.labels(outcome)
        self.operation = Histogram(
            "gpumgr_operation_duration_seconds",
            "Time a control operation (start, stop, restart, sleep, wake, swap) took",
            labelnames=["operation", "outcome"], buckets=SWAP_BUCKETS_S, registry=registry)
        self.cold_start = Histogram(
            "gpumgr_backend_cold_start_seconds",
            "Time from an engine's spawn to its first healthy answer",
            labelnames=["backend"], buckets=COLD_START_BUCKETS_S, registry=registry)
        self.wake = Histogram(
            "gpumgr_backend_wake_seconds", "Time a sleeping engine took to serve again",
            labelnames=["backend"], buckets=WAKE_BUCKETS_S, registry=registry)
        self.drain = Histogram(
            "gpumgr_backend_drain_seconds",
            "Time an engine spent draining (in-flight requests finishing) before it stopped or slept",
            labelnames=["backend"], buckets=DRAIN_BUCKETS_S, registry=registry)
        self.detection = Histogram(
            "gpumgr_failure_detection_seconds",
            "Time from the last good probe to the status saying a backend is not serving; "
            "kind=death: its process exited, kind=hang: probes failed while it ran",
            labelnames=["backend", "kind"], buckets=DETECTION_BUCKETS_S, registry=registry)
        self.restarts = Counter(
            "gpumgr_backend_restarts_by_reason",
            "Engine restarts by reason: crash, oom, hang (restarted unresponsive), reload "
            "(its launch identity changed)",
            labelnames=["backend", "reason"], registry=registry)
        self.estimate_abs_error = Histogram(
            "gpumgr_start_estimate_abs_error_seconds",
            "How far the announced start time (eta_s at spawn) was from the real one",
            labelnames=["backend"], buckets=ESTIMATE_ERROR_BUCKETS_S, registry=registry)
        self.estimate_error = Gauge(
            "gpumgr_start_estimate_error_seconds",
            "The last start's real duration minus the estimate (positive: slower than announced)",
            labelnames=["backend"], registry=registry)

    def render(self) -> bytes:
        """The event metrics' exposition text, rendered again only after a change."""
        if self._text is None:
            self._text = generate_latest(self.registry)
        return self._text

    def observe_cold_start(self, backend: str, seconds: float) -> None:
        self.cold_start.labels(backend).observe(max(0.0, seconds))
        self._text = None

    def observe_drain(self, backend: str, seconds: float) -> None:
        self.drain.labels(backend).observe(max(0.0, seconds))
        self._text = None

    def observe_detection(self, backend: str, kind: str, seconds: float) -> None:
        self.detection.labels(backend, kind).observe(max(0.0, seconds))
        self._text = None

    def count_restart(self, backend: str, reason: str) -> None:
        self.restarts.labels(backend, reason).inc()
        self._text = None

    def observe_operation(self, record: OperationRecord) -> None:
        self._text = None
        self.operation.labels(record.kind, record.outcome).observe(record.seconds)
        if record.kind == "swap":
            self.swap.labels(record.mode, record.outcome).observe(record.seconds)
            self.swaps.labels(record.outcome).inc()
        wake_s = record.timings_s.get("wake")
        if wake_s is not None and record.backends:
            self.wake.labels(record.backends[-1]).observe(wake_s)

    def know_backend(self, backend: str) -> None:
        """Create a backend's restart counters at 0, so ``increase()`` sees its first restart."""
        for reason in RESTART_REASONS:
            self.restarts.labels(backend, reason)
        self._text = None

    def observe_start_estimate(self, backend: str, estimate_s: float, actual_s: float) -> None:
        self._text = None
        self.estimate_error.labels(backend).set(round(actual_s - estimate_s, 3))
        self.estimate_abs_error.labels(backend).observe(abs(actual_s - estimate_s))

    def forget_backend(self, backend: str) -> None:
        """Drop a removed backend's series (labelled by backend first)."""
        self._text = None
        for metric in (self.cold_start, self.wake, self.drain, self.estimate_abs_error,
                       self.estimate_error):
            with contextlib.suppress(KeyError):
                metric.remove(backend)
        for kind in ("death", "hang"):
            with contextlib.suppress(KeyError):
                self.detection.remove(backend, kind)
        for reason in RESTART_REASONS:
            with contextlib.suppress(KeyError):
                self.restarts.remove(backend, reason)
