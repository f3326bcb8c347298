"""Prometheus view of the status document, on a registry of its own.

Gauges and counters are not kept in parallel with the document (two copies drift): a collector
reads the current document at scrape time, so ``/metrics`` says exactly what ``/v1/status``
says, and a removed backend or GPU process disappears from both. Only the probe latency, a
distribution over time that the document does not hold, is a real ``Histogram``.

The registry is not prometheus-client's global one, so several daemons in one test process (or
a library user's own metrics) never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
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
    """The daemon's Prometheus metrics: the document's view plus the probe-latency histogram."""

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
        return generate_latest(self.registry)
