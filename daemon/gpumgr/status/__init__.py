"""The status document (DESIGN.md §5) and its publication: file, SSE fan-out, Prometheus.

Only :class:`~gpumgr.status.publisher.StatusPublisher` changes the current document; the HTTP
layer (``gpumgr.api``) and everyone else read it.
"""

from gpumgr.status.document import (
    BackendStatus,
    DaemonInfo,
    GpuProcess,
    GpuStatus,
    ModelStatus,
    StatusDocument,
)
from gpumgr.status.publisher import BackendEvent, StatusPublisher, Subscription

__all__ = [
    "BackendEvent",
    "BackendStatus",
    "DaemonInfo",
    "GpuProcess",
    "GpuStatus",
    "ModelStatus",
    "StatusDocument",
    "StatusPublisher",
    "Subscription",
]
