"""Which vLLM a provider runs: ``<vllm> --version``, cached by executable path and mtime.

``vllm --version`` imports torch and takes seconds (tens on a cold disk), so the answer is kept
in ``<state_dir>/vllm-versions.json`` keyed by the command, the resolved executable's path and
its modification time: a ``pip install -U vllm`` rewrites the entry point and so asks again. The
simulated engine answers with the release it imitates (``GPUMGR_SIM_VLLM_VERSION``), which is
part of the key. Never raises: a missing executable or a failing one is an answer too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpumgr.fsio import write_atomic
from gpumgr.vllm_tables.releases import Release, release_for

VERSION_TIMEOUT_S = 60.0
SIM_VERSION_ENV = "GPUMGR_SIM_VLLM_VERSION"
"""The release the simulated engine imitates (default 0.33.0); also its ``--version`` answer."""
CACHE_FILE = "vllm-versions.json"


@dataclass(frozen=True)
class VersionAnswer:
    """What ``<vllm> --version`` said: ``found`` False when the executable does not exist."""

    argv: tuple[str, ...]
    found: bool
    version: str | None = None
    error: str | None = None
    cached: bool = False

    @property
    def release(self) -> Release:
        return release_for(self.version)


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _one_line(text: str, limit: int = 160) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _resolve(exe: str, env: Mapping[str, str]) -> str | None:
    if os.sep in exe:
        return exe if os.access(exe, os.X_OK) else None
    return shutil.which(exe, path=env.get("PATH"))


class VllmVersions:
    """``--version`` answers by command, remembered on disk (``path`` None: in memory only)."""

    def __init__(self, path: Path | None, timeout_s: float = VERSION_TIMEOUT_S,
                 run: Runner = subprocess.run) -> None:  # fmt: skip
        self.path = path
        self.timeout_s = timeout_s
        self._run = run
        self._memory: dict[str, dict[str, Any]] = {}

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return self._memory
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, entries: dict[str, dict[str, Any]]) -> None:
        if self.path is None:
            self._memory = entries
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(entries, indent=1, sort_keys=True).encode())
        except OSError:
            pass  # a read-only state dir (doctor as another user): ask again next time

    def answer(self, argv: Sequence[str], env: Mapping[str, str]) -> VersionAnswer:
        """The version of the vLLM that ``argv`` (the command before ``serve``) runs."""
        argv = tuple(argv)
        resolved = _resolve(argv[0], env) if argv else None
        if resolved is None:
            return VersionAnswer(argv, found=False)
        try:
            mtime_ns = os.stat(resolved).st_mtime_ns
        except OSError:
            return VersionAnswer(argv, found=False)
        key = json.dumps([list(argv), resolved, mtime_ns, env.get(SIM_VERSION_ENV, "")])
        entries = self._load()
        hit = entries.get(key)
        if isinstance(hit, dict) and hit.get("version"):
            return VersionAnswer(argv, True, str(hit["version"]), cached=True)
        answer = self._ask(argv, env)
        if answer.version is not None:
            entries = {k: v for k, v in entries.items()
                       if not (isinstance(v, dict) and v.get("argv") == list(argv))}
            entries[key] = {**asdict(answer), "argv": list(argv), "cached": False}
            self._save(entries)
        return answer

    def _ask(self, argv: tuple[str, ...], env: Mapping[str, str]) -> VersionAnswer:
        try:
            done = self._run([*argv, "--version"], capture_output=True, text=True,
                             timeout=self.timeout_s, env=dict(env), stdin=subprocess.DEVNULL,
                             check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return VersionAnswer(argv, True, error=f"no answer in {self.timeout_s:g} s")
        except OSError as exc:
            return VersionAnswer(argv, True, error=str(exc))
        lines = [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]
        if done.returncode == 0 and lines:
            return VersionAnswer(argv, True, version=lines[-1])
        err = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return VersionAnswer(argv, True, error=_one_line(f"exit {done.returncode}: {err}"))
