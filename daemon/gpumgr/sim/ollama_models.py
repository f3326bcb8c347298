"""The simulated Ollama's model store: what is pulled, what is loaded, and its VRAM on the sim GPU.

Like the real Ollama, a load reads the card's free memory first and puts on the GPU only what
fits; the rest "spills" to the CPU (``size_vram < size``). Loaded models are registered as one
allocation of this process (``process_name="ollama"``), so gpumgr sees them as GPU processes
owned by ``ollama``.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from gpumgr.sim.gpu import SimGpuState

MIB = 1024 * 1024
DEFAULT_SIZE_MIB = 4096
DEFAULT_KEEP_ALIVE_S = 300.0
FOREVER = float("inf")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object) -> float:
    """Ollama's ``keep_alive``: seconds as a number, or a Go duration ("5m", "1h30m", "0");
    negative means forever; absent means the 5-minute default."""
    if value is None or value == "":
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, bool):
        raise ValueError(f"invalid keep_alive {value!r}")
    if isinstance(value, (int, float)):
        return FOREVER if value < 0 else float(value)
    text = str(value).strip()
    try:
        seconds = float(text)
        return FOREVER if seconds < 0 else seconds
    except ValueError:
        pass
    if text.startswith("-"):
        return FOREVER
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid keep_alive duration {text!r}")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def canonical(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class Loaded:
    size_mib: int
    vram_mib: int
    expires_at: float  # wall clock; inf = kept forever


class ModelStore:
    """Pulled and loaded models of one simulated Ollama process."""

    def __init__(
        self,
        pulled: dict[str, int],
        gpu_state: SimGpuState | None = None,
        gpu_uuid: str | None = None,
        context_length: int = 4096,
    ) -> None:
        self.pulled = {canonical(n): s for n, s in pulled.items()}
        self.loaded: dict[str, Loaded] = {}
        self.gpu_state = gpu_state
        self.gpu_uuid = gpu_uuid
        self.context_length = context_length
        self.pid = os.getpid()

    @classmethod
    def pick_gpu(cls, state: SimGpuState | None) -> str | None:
        """``CUDA_VISIBLE_DEVICES`` (a UUID or an index) or else the first simulated card."""
        if state is None:
            return None
        gpus = state.read().gpus
        if not gpus:
            return None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        for g in gpus:
            if visible and (g.uuid == visible or str(g.index) == visible):
                return g.uuid
        return gpus[0].uuid

    def is_pulled(self, name: str) -> bool:
        return canonical(name) in self.pulled

    def load(self, name: str, keep_alive_s: float, now: float | None = None) -> Loaded:
        """Load (or refresh the expiry of) a pulled model; VRAM is what fits, the rest spills."""
        now = time.time() if now is None else now
        key = canonical(name)
        expires = now + keep_alive_s if keep_alive_s != FOREVER else FOREVER
        if key in self.loaded:
            self.loaded[key].expires_at = expires
            return self.loaded[key]
        size = self.pulled[key]
        vram = size
        if self.gpu_state is not None and self.gpu_uuid is not None:
            free = self.gpu_state.read().free_mib(self.gpu_uuid)
            vram = max(0, min(size, free))
        entry = Loaded(size, vram, expires)
        self.loaded[key] = entry
        self._register()
        return entry

    def unload(self, name: str) -> bool:
        removed = self.loaded.pop(canonical(name), None) is not None
        if removed:
            self._register()
        return removed

    def expire(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        gone = [n for n, m in self.loaded.items() if m.expires_at <= now]
        for n in gone:
            del self.loaded[n]
        if gone:
            self._register()
        return gone

    def release_all(self) -> None:
        self.loaded.clear()
        if self.gpu_state is not None:
            self.gpu_state.release(self.pid)

    def _register(self) -> None:
        if self.gpu_state is None or self.gpu_uuid is None:
            return
        total = sum(m.vram_mib for m in self.loaded.values())
        self.gpu_state.allocate(self.pid, self.gpu_uuid, total, "ollama")

    # -- API documents ---------------------------------------------------------------------
    def _details(self, name: str) -> dict[str, object]:
        family = name.split(":")[0].split("/")[-1]
        return {"format": "gguf", "family": family, "families": [family],
                "parameter_size": "7B", "quantization_level": "Q4_K_M", "parent_model": ""}

    def tags(self) -> dict[str, object]:
        return {"models": [
            {"name": n, "model": n, "modified_at": rfc3339(0), "size": s * MIB,
             "digest": _digest(n), "details": self._details(n)}
            for n, s in sorted(self.pulled.items())
        ]}

    def ps(self) -> dict[str, object]:
        models = []
        for n, m in sorted(self.loaded.items()):
            expires = rfc3339(m.expires_at) if m.expires_at != FOREVER else "2318-08-02T00:00:00Z"
            models.append({"name": n, "model": n, "size": m.size_mib * MIB,
                           "digest": _digest(n),
                           "details": self._details(n), "expires_at": expires,
                           "size_vram": m.vram_mib * MIB, "context_length": self.context_length})
        return {"models": models}
