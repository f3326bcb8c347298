"""The NVML backend (``nvidia-ml-py``, imported as ``pynvml``).

Every NVML failure becomes data, not a crash: a missing library, an unloaded driver, missing
permission or a driver/library mismatch after an upgrade yield an inventory whose ``error`` reads
"GPU unavailable: …" with the fix an operator would try; an optional reading that a card or
driver does not support (temperature, utilisation, the v2 memory call) is left None.

The NVML module is passed in (``nvml=``) so tests drive this code with recorded values and
raised errors from a fake; production passes nothing and gets the real ``pynvml``. Error
classification uses the real ``pynvml`` error codes either way (``NVMLError.value``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import psutil
import pynvml  # type: ignore[import-untyped]
import structlog

from gpumgr.gpu import GpuInfo, GpuInventory, GpuProcess, ProcessKind

log = structlog.get_logger(__name__)

ProcessInspector = Callable[[int], tuple[str, int | None]]
"""pid -> (process name, process group id); ("", None) when the process cannot be seen."""

# One line per failure an operator meets, with the fix to try. Codes are NVML's.
_UNAVAILABLE_HINTS: dict[int, str] = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: (
        "NVML library (libnvidia-ml.so.1) not found; is the NVIDIA driver installed?"
    ),
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: (
        "NVIDIA driver not loaded (no /dev/nvidia*); check `nvidia-smi` and the kernel module"
    ),
    pynvml.NVML_ERROR_NO_PERMISSION: (
        "no permission to query NVML; the user needs access to /dev/nvidia*"
    ),
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "NVIDIA driver/library version mismatch (driver upgraded without reboot); reboot or "
        "reload the nvidia kernel modules"
    ),
    pynvml.NVML_ERROR_UNINITIALIZED: "NVML is not initialised",
    pynvml.NVML_ERROR_GPU_IS_LOST: "the GPU fell off the bus (GPU is lost); a reboot is needed",
    pynvml.NVML_ERROR_RESET_REQUIRED: "the GPU requires a reset",
    pynvml.NVML_ERROR_OPERATING_SYSTEM: "the operating system blocked the NVML request",
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: "the NVML library lacks a required function (old driver?)",
}

# Codes meaning "this reading does not exist here": the field stays None, nothing else fails.
_UNSUPPORTED = frozenset(
    {
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        pynvml.NVML_ERROR_NOT_FOUND,
        pynvml.NVML_ERROR_NO_DATA,
        pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
        pynvml.NVML_ERROR_INVALID_ARGUMENT,
    }
)


def _code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def unavailable_message(exc: BaseException) -> str:
    """The one-line "GPU unavailable: …" for an NVML error (or an unexpected failure)."""
    code = _code(exc)
    hint = _UNAVAILABLE_HINTS.get(code) if code is not None else None
    if hint is None:
        hint = f"NVML error: {exc}" if isinstance(exc, pynvml.NVMLError) else f"{exc!r}"
    return f"GPU unavailable: {hint}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def psutil_inspector(pid: int) -> tuple[str, int | None]:
    """Name and process group of a local process; NVML's pids may belong to another namespace."""
    try:
        name = psutil.Process(pid).name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "", None
    try:
        pgid: int | None = os.getpgid(pid)
    except OSError:
        pgid = None
    return name, pgid


class NvmlBackend:
    """Reads every card through NVML: init, query, shutdown on each ``read()``.

    Initialising per read keeps a daemon that outlives a driver upgrade honest: the next read
    reports the mismatch instead of answering from a stale handle.
    """

    def __init__(self, nvml: Any = None, inspect_process: ProcessInspector | None = None) -> None:
        self._nvml = pynvml if nvml is None else nvml
        self._inspect = inspect_process or psutil_inspector
        self._last_error: str | None = None

    def _unavailable(self, exc: BaseException) -> GpuInventory:
        """The inventory of an unreadable GPU; logged once per outage, not on every poll."""
        msg = unavailable_message(exc)
        if msg != self._last_error:
            log.info("gpu.unavailable", backend="nvml", reason=msg)
            self._last_error = msg
        return GpuInventory(backend="nvml", error=msg)

    def read(self) -> GpuInventory:
        nv = self._nvml
        try:
            nv.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - any failure to start NVML is "unavailable"
            return self._unavailable(exc)
        try:
            warnings: list[str] = []
            driver = self._optional(lambda: _text(nv.nvmlSystemGetDriverVersion()))
            count = int(nv.nvmlDeviceGetCount())
            gpus = tuple(self._read_gpu(i, warnings) for i in range(count))
            if self._last_error is not None:
                log.info("gpu.available", backend="nvml", gpus=count)
                self._last_error = None
            return GpuInventory(
                backend="nvml", gpus=gpus, driver_version=driver, warnings=tuple(warnings)
            )
        except Exception as exc:  # noqa: BLE001 - a card that cannot be read: report, not crash
            return self._unavailable(exc)
        finally:
            try:
                nv.nvmlShutdown()
            except Exception:  # noqa: BLE001 - nothing useful to do about a failed shutdown
                pass

    # -- one card --------------------------------------------------------------------------
    def _read_gpu(self, index: int, warnings: list[str]) -> GpuInfo:
        nv = self._nvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(nv.nvmlDeviceGetUUID(handle))
        name = _text(nv.nvmlDeviceGetName(handle))
        total, used, free, reserved = self._memory(handle)
        temp = self._optional(
            lambda: int(nv.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
        )
        util = self._optional(lambda: int(nv.nvmlDeviceGetUtilizationRates(handle).gpu))
        cc = self._optional(
            lambda: "{}.{}".format(*nv.nvmlDeviceGetCudaComputeCapability(handle))
        )
        # A process with a CUDA and a graphics context is in both lists with the same memory.
        by_pid: dict[int, GpuProcess] = {}
        for proc in self._processes(handle, "compute", warnings) + self._processes(
            handle, "graphics", warnings
        ):
            by_pid.setdefault(proc.pid, proc)
        procs = tuple(by_pid.values())
        return GpuInfo(
            index=index,
            uuid=uuid,
            name=name,
            memory_total_bytes=total,
            memory_used_bytes=used,
            memory_free_bytes=free,
            memory_reserved_bytes=reserved,
            temperature_c=temp,
            utilization_pct=util,
            processes=procs,
            compute_capability=cc,
        )

    def _memory(self, handle: Any) -> tuple[int, int, int, int | None]:
        """v2 memory info (which splits out driver-``reserved`` memory) where the driver has it."""
        nv = self._nvml
        try:
            m = nv.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
            return int(m.total), int(m.used), int(m.free), int(m.reserved)
        except pynvml.NVMLError as exc:
            if _code(exc) not in _UNSUPPORTED:
                raise
        except TypeError:
            pass  # an older nvidia-ml-py without the version argument
        m = nv.nvmlDeviceGetMemoryInfo(handle)
        return int(m.total), int(m.used), int(m.free), None

    def _processes(
        self, handle: Any, kind: ProcessKind, warnings: list[str]
    ) -> tuple[GpuProcess, ...]:
        """Running processes through the v3 call, else v2 (drivers before 510 lack v3)."""
        nv = self._nvml
        base = (
            "nvmlDeviceGetComputeRunningProcesses"
            if kind == "compute"
            else "nvmlDeviceGetGraphicsRunningProcesses"
        )
        raw: list[Any] | None = None
        for suffix in ("_v3", "_v2"):
            fn = getattr(nv, base + suffix, None)
            if fn is None:
                continue
            try:
                raw = list(fn(handle))
                break
            except pynvml.NVMLError as exc:
                if _code(exc) not in _UNSUPPORTED:
                    raise
        if raw is None:
            warnings.append(f"{kind} process list not supported by this driver")
            return ()
        out: list[GpuProcess] = []
        for p in raw:
            pid = int(p.pid)
            used = p.usedGpuMemory
            if used is not None and int(used) >= pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
                used = None
            pname, pgid = self._inspect(pid)
            out.append(
                GpuProcess(
                    pid=pid,
                    used_bytes=None if used is None else int(used),
                    name=pname,
                    kind=kind,
                    pgid=pgid,
                )
            )
        return tuple(out)

    @staticmethod
    def _optional(read: Callable[[], Any]) -> Any:
        """A reading that may be unsupported on this card or driver: None instead of a failure."""
        try:
            return read()
        except pynvml.NVMLError as exc:
            if _code(exc) in _UNSUPPORTED:
                return None
            raise
