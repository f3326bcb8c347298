"""The simulated vLLM engine: ``python -m gpumgr.sim.vllm serve MODEL_PATH [vllm serve flags]``.

A real process that starts like vLLM 0.33 (or, with ``GPUMGR_SIM_VLLM_VERSION=0.34.0``, like
0.34: no refusal, the KV cache sized from memory after warm-up) on the simulated GPU (``gpumgr.sim.gpu``, card picked
by ``CUDA_VISIBLE_DEVICES``): it registers its CUDA context, refuses to start with vLLM's message
when free memory is below ceil(fraction × total), "loads" without listening (connections
refused), sizes its KV cache from what is left, logs vLLM's measurement lines, then binds and
serves the OpenAI API. SIGTERM shuts it down gracefully and frees its memory (exit 0). Chaos
switches are environment variables (``gpumgr.sim.vllm_engine.knobs``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import NoReturn

from gpumgr.vllm_tables.parser import ServeArgsError
from gpumgr.vllm_tables.releases import Release, release_for
from gpumgr.modelfiles import ModelFileError, read_model_dims, weights_bytes
from gpumgr.sim.gpu import SimGpuSpec, SimGpuState, SimSnapshot
from gpumgr.sim.vllm_engine import memory as mem
from gpumgr.sim.vllm_engine.api import EngineApi, EngineInfo
from gpumgr.sim.vllm_engine.args import USAGE, ServeArgs, parse_args
from gpumgr.sim.vllm_engine.cuda import CudaUnavailable, cuda_state_from_env
from gpumgr.sim.vllm_engine.http import connection_handler
from gpumgr.sim.vllm_engine.knobs import KnobError, SimKnobs

MIB = mem.MIB
ENGINE_PROCESS_NAME = "VLLM::EngineCore"
_GRANDCHILD_CODE = "import time\nwhile True:\n    time.sleep(3600)\n"


class EngineExit(Exception):
    """Ends the engine with ``code`` after printing ``message`` (vLLM's last error line)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def log(level: str, source: str, message: str, engine_pid: int | None = None) -> None:
    """One line in vLLM's format; engine-process lines carry vLLM's ``(EngineCore_DP0 pid=N)``."""
    prefix = f"(EngineCore_DP0 pid={engine_pid}) " if engine_pid else ""
    stamp = time.strftime("%m-%d %H:%M:%S")
    stream = sys.stderr if level in ("ERROR", "CRITICAL") else sys.stdout
    print(f"{prefix}{level} {stamp} [{source}] {message}", file=stream, flush=True)


def traceback_exit(error_line: str, where: str = "run_engine_core") -> NoReturn:
    """Print a traceback ending in ``error_line`` and exit 1 at once, as a crashing engine does."""
    print(
        "Traceback (most recent call last):\n"
        '  File "/opt/vllm/lib/python3.12/site-packages/vllm/v1/engine/core.py", '
        f"line 701, in {where}\n    engine_core.run_busy_loop()\n{error_line}",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(1)


class SimEngine:
    """One engine's life: checks, load, sizing, serving, chaos, shutdown."""

    def __init__(self, args: ServeArgs, knobs: SimKnobs, state: SimGpuState) -> None:
        self.release: Release = release_for(knobs.vllm_version)
        self.args = args
        self.knobs = knobs
        self.state = state
        self.pid = os.getpid()
        self.holder_pid = self.pid
        self.grandchild: subprocess.Popen[bytes] | None = None
        self.shutdown = asyncio.Event()
        self.gpu: SimGpuSpec | None = None
        self.held_mib = 0
        self.api: EngineApi | None = None
        self.init_done = False
        self.load_s = 0.0

    # -- helpers ---------------------------------------------------------------------------
    def event(self, name: str, **fields: object) -> None:
        if self.knobs.events_file is None:
            return
        line = {"pid": self.pid, "port": self.args.port, "event": name, "t": time.time(), **fields}
        with open(self.knobs.events_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def register(self, used_mib: int) -> SimSnapshot:
        assert self.gpu is not None
        return self.state.allocate(self.holder_pid, self.gpu.uuid, used_mib, ENGINE_PROCESS_NAME)

    def own_mib(self, snap: SimSnapshot) -> int:
        assert self.gpu is not None
        mine = (self.pid, self.holder_pid)
        return sum(a.used_mib for a in snap.allocations
                   if a.gpu_uuid == self.gpu.uuid and a.pid in mine)  # fmt: skip

    def others_mib(self, snap: SimSnapshot) -> int:
        assert self.gpu is not None
        return snap.used_mib(self.gpu.uuid) - self.own_mib(snap)

    def pick_gpu(self, snap: SimSnapshot) -> SimGpuSpec:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        wanted = visible.split(",")[0].strip() if visible is not None else None
        for i, gpu in enumerate(snap.gpus):
            if wanted is None or wanted in (gpu.uuid, str(i)):
                return gpu
        raise EngineExit(1, "RuntimeError: No CUDA GPUs are available")

    def cleanup(self) -> None:
        """Stop the grandchild (if it still obeys SIGTERM) and give the memory back."""
        if self.grandchild is not None and self.grandchild.poll() is None:
            self.grandchild.terminate()
            try:
                self.grandchild.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.state.release(self.pid)
        if self.holder_pid != self.pid and self.grandchild and self.grandchild.poll() is not None:
            self.state.release(self.holder_pid)

    # -- phases ----------------------------------------------------------------------------
    def check_model(self, gpu: SimGpuSpec) -> tuple[int, int, int]:
        """(weights bytes, KV bytes per token, max_model_len) or vLLM's error."""
        path = self.args.model_path
        if not path.is_dir():
            raise EngineExit(1, f"OSError: {path} is not a local folder and HF_HUB_OFFLINE=1 "
                                "forbids downloading it from the Hugging Face Hub")  # fmt: skip
        try:
            dims = read_model_dims(path)
            weights = weights_bytes(path)
        except ModelFileError as exc:
            raise EngineExit(1, f"ValueError: {exc}") from None
        major = int(gpu.compute_capability.split(".")[0])
        if self.args.dtype == "bfloat16" and major < 8:
            raise EngineExit(1, mem.bf16_error(gpu.name, gpu.compute_capability))
        if self.args.quantization:
            error = mem.quantization_mismatch_error(dims.quantization_method, self.args.quantization)
            if error:
                raise EngineExit(1, error)
        derived = dims.max_position_embeddings
        max_len = self.args.max_model_len or derived or 2048
        if derived and max_len > derived:
            raise EngineExit(
                1,
                f"ValueError: User-specified max_model_len ({max_len}) is greater than the "
                f"derived max_model_len (max_position_embeddings={derived} in model's "
                "config.json). To allow overriding this maximum, set the env var "
                "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.",
            )
        return weights, dims.kv_bytes_per_token(), max_len

    async def wait_or_shutdown(self, seconds: float) -> bool:
        """Sleep ``seconds``; True when a shutdown was asked for meanwhile."""
        try:
            await asyncio.wait_for(self.shutdown.wait(), timeout=seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def start(self) -> mem.EngineMemory | None:
        """Everything before binding; None when SIGTERM came first."""
        snap = self.state.read()
        self.gpu = gpu = self.pick_gpu(snap)
        weights, kv_per_token, max_len = self.check_model(gpu)
        if self.knobs.grandchild:
            self.grandchild = subprocess.Popen([sys.executable, "-c", _GRANDCHILD_CODE],
                                               stdin=subprocess.DEVNULL)  # fmt: skip
            self.holder_pid = self.grandchild.pid
        engine_pid = self.holder_pid
        total = gpu.memory_total_mib * MIB
        snap = self.register(self.knobs.context_mib)
        self.event("init_start")
        free = snap.free_mib(gpu.uuid) * MIB
        error = mem.free_memory_error(free, total, self.args.fraction)
        if error and not self.args.extensible_kv_cache:  # 0.34: the fraction is only a cap
            raise EngineExit(1, error)
        others_before = self.others_mib(snap)
        load_s = self.knobs.load_s if self.knobs.load_s is not None else mem.load_seconds(weights)
        self.load_s = load_s
        log("INFO", "gpu_model_runner.py", f"Starting to load model {self.args.model_path}...",
            engine_pid)  # fmt: skip
        weights_mib = -(-weights // MIB)
        self.register(self.knobs.context_mib + weights_mib)
        if self.knobs.oom_at_start:
            await self.wait_or_shutdown(min(load_s, 0.2))
            own = (self.knobs.context_mib + weights_mib) * MIB
            traceback_exit(mem.cuda_oom_error(260 * MIB, total, free - own, own), "load_model")
        if await self.wait_or_shutdown(load_s):
            return None
        snap = self.state.read()
        others_now = self.others_mib(snap)
        # vLLM asserts that free memory fell while it profiled (its weights and activations
        # went in); it fails when another process released more than that meanwhile.
        free_at_profile = snap.free_mib(gpu.uuid) * MIB - self.knobs.activation_mib * MIB
        if free_at_profile >= free and not self.args.extensible_kv_cache:
            raise EngineExit(1, mem.profiling_error(free, free_at_profile))
        if self.args.extensible_kv_cache:
            return self.start_extensible(snap, gpu, total, weights, kv_per_token, max_len, load_s)
        try:
            sized = mem.size_engine(
                total_bytes=total,
                fraction=self.args.fraction,
                weights_bytes=weights,
                kv_bytes_per_token=kv_per_token,
                max_model_len=max_len,
                activation_bytes=self.knobs.activation_mib * MIB,
                cuda_graph_bytes=0 if self.args.enforce_eager else self.knobs.cuda_graph_mib * MIB,
                others_grew_bytes=(others_now - others_before) * MIB,
                kv_cache_memory_bytes=self.args.kv_cache_memory_bytes,
            )
        except mem.EngineStartError as exc:
            raise EngineExit(1, str(exc)) from None
        held_mib = -(-sized.held_bytes // MIB)
        free_now = snap.free_mib(gpu.uuid)
        if held_mib - weights_mib > free_now:  # someone took the memory while it loaded
            own = (self.knobs.context_mib + weights_mib) * MIB
            missing = (held_mib - weights_mib) * MIB
            raise EngineExit(1, mem.cuda_oom_error(missing, total, free_now * MIB, own))
        self.held_mib = held_mib
        self.register(self.knobs.context_mib + held_mib)
        for source, line in mem.startup_log_lines(sized, load_s):
            log("INFO", source, line, engine_pid)
        self.event("init_end", ok=True)
        self.init_done = True
        return sized

    def start_extensible(
        self, snap: SimSnapshot, gpu: SimGpuSpec, total: int, weights: int, kv_per_token: int,
        max_len: int, load_s: float,
    ) -> mem.EngineMemory:
        """0.34: weights and CUDA graphs are in, warm-up is done; commit the KV cache that the
        cap allows and the memory free now leaves (less the activation peak and a margin)."""
        graphs = 0 if self.args.enforce_eager else self.knobs.cuda_graph_mib * MIB
        weights_mib = -(-weights // MIB)
        snap = self.register(self.knobs.context_mib + weights_mib + graphs // MIB)
        free_after = snap.free_mib(gpu.uuid) * MIB
        activation = self.knobs.activation_mib * MIB
        try:
            sized = mem.size_extensible(
                total_bytes=total, fraction=self.args.fraction, weights_bytes=weights,
                kv_bytes_per_token=kv_per_token, max_model_len=max_len,
                activation_bytes=activation, cuda_graph_bytes=graphs,
                free_after_warmup_bytes=free_after, margin_bytes=self.knobs.kv_margin_mib * MIB,
            )  # fmt: skip
        except mem.EngineStartError as exc:
            raise EngineExit(1, str(exc)) from None
        capacity = mem.capacity_tokens(total, self.args.fraction, weights, activation, graphs,
                                       kv_per_token)  # fmt: skip
        self.held_mib = -(-sized.held_bytes // MIB)
        self.register(self.knobs.context_mib + self.held_mib)
        for source, line in mem.extensible_log_lines(sized, load_s, self.args.fraction, total,
                                                     free_after, capacity):  # fmt: skip
            log("INFO", source, line, self.holder_pid)
        self.event("init_end", ok=True, kv_cache_tokens=sized.kv_cache_tokens)
        self.init_done = True
        return sized

    async def sleep_hook(self, to_sleep: bool) -> str | None:
        """Sleep level 1: weights and KV cache leave the card, the context stays."""
        assert self.gpu is not None
        if to_sleep:
            self.register(self.knobs.context_mib)
            log("INFO", "gpu_worker.py", "Sleep mode freed memory; the CUDA context stays.")
            return None
        free_mib = self.state.read().free_mib(self.gpu.uuid)
        if free_mib < self.held_mib:
            total = self.gpu.memory_total_mib * MIB
            return mem.cuda_oom_error(self.held_mib * MIB, total, free_mib * MIB,
                                      self.knobs.context_mib * MIB)  # fmt: skip
        wake_s = self.knobs.wake_s if self.knobs.wake_s is not None else self.load_s / 10
        await asyncio.sleep(wake_s)
        self.register(self.knobs.context_mib + self.held_mib)
        log("INFO", "gpu_worker.py", f"It took {wake_s:.6f} seconds to wake up.")
        self.event("woken", took_s=wake_s)
        return None

    def schedule_chaos(self, loop: asyncio.AbstractEventLoop) -> None:
        k = self.knobs
        if k.crash_after_s is not None:
            loop.call_later(k.crash_after_s, self.crash)
        if k.hang_after_s is not None:
            loop.call_later(k.hang_after_s, self.hang)
        if k.dead_after_s is not None:
            loop.call_later(k.dead_after_s, self.engine_died)

    def crash(self) -> NoReturn:
        log("ERROR", "core.py:710", "EngineCore encountered a fatal error.", self.holder_pid)
        traceback_exit("RuntimeError: CUDA error: an illegal memory access was encountered "
                       f"(gpumgr simulated crash after {self.knobs.crash_after_s} s)")  # fmt: skip

    def engine_died(self) -> None:
        if self.api is not None:
            self.api.dead = True
        log("ERROR", "async_llm.py", "AsyncLLM output_handler failed.", None)
        print("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
              "See stack trace (above) for the root cause.", file=sys.stderr, flush=True)  # fmt: skip

    def hang(self) -> NoReturn:
        """Block the event loop: the port stays open, nothing answers. A plain Python SIGTERM
        handler still runs between sleeps (unless SIGTERM is ignored), as in a stuck process."""
        if not self.knobs.ignore_sigterm:

            def on_term(signum: int, frame: object) -> None:
                self.cleanup()
                os._exit(0)

            signal.signal(signal.SIGTERM, on_term)
        while True:
            time.sleep(3600)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if not self.knobs.ignore_sigterm:
            loop.add_signal_handler(signal.SIGTERM, self.shutdown.set)
        loop.add_signal_handler(signal.SIGINT, self.shutdown.set)
        names = " ".join(self.args.served_names)
        log("INFO", "api_server.py", f"vLLM API server version {self.knobs.vllm_version} "
                                     "(gpumgr simulated engine)")  # fmt: skip
        log("INFO", "utils.py", f"non-default args: model={str(self.args.model_path)!r}, "
            f"served_model_name={names!r}, port={self.args.port}, "
            f"gpu_memory_utilization={self.args.fraction}")  # fmt: skip
        sized = await self.start()
        if sized is None:
            return self.stop(reason="SIGTERM while loading")
        info = EngineInfo(
            served_names=self.args.served_names,
            model_path=str(self.args.model_path),
            max_model_len=sized.max_model_len,
            max_num_seqs=self.args.max_num_seqs,
            kv_cache_tokens=sized.kv_cache_tokens,
            fraction=self.args.fraction,
            api_key=self.args.api_key or os.environ.get("VLLM_API_KEY") or None,
            sleep_endpoints=self.args.enable_sleep_mode
            and os.environ.get("VLLM_SERVER_DEV_MODE") == "1",
            token_delay_s=self.knobs.token_delay_s,
            version=self.knobs.vllm_version,
        )
        self.api = EngineApi(info, self.sleep_hook)
        writers: set[asyncio.StreamWriter] = set()
        host = self.args.host or "0.0.0.0"
        try:
            server = await asyncio.start_server(
                connection_handler(self.api.handle, writers), host, self.args.port,
                reuse_address=True, backlog=128,
            )  # fmt: skip
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise EngineExit(1, f"OSError: [Errno {exc.errno}] {reason}: "
                                f"('{host}', {self.args.port})") from None  # fmt: skip
        log("INFO", "api_server.py", f"Starting vLLM API server 0 on http://{host}:{self.args.port}")
        log("INFO", "launcher.py", "Application startup complete.")
        self.event("serving")
        self.schedule_chaos(loop)
        await self.shutdown.wait()
        log("INFO", "launcher.py", "Shutting down FastAPI HTTP server.")
        server.close()
        for w in list(writers):
            w.close()
        await server.wait_closed()
        return self.stop(reason="SIGTERM")

    def stop(self, reason: str) -> int:
        self.cleanup()
        self.event("exit", reason=reason)
        return 0


def _usage_error(message: str) -> int:
    print(f"{USAGE}\nvllm serve: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    tokens = sys.argv[1:] if argv is None else argv
    try:
        knobs = SimKnobs.from_env(os.environ)
    except KnobError as exc:
        return _usage_error(str(exc))
    if tokens[:1] == ["--version"]:  # `vllm --version` (gpumgr asks it, cached by path+mtime)
        print(knobs.vllm_version)
        return 0
    release = release_for(knobs.vllm_version)
    if knobs.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild
    try:
        args = parse_args(tokens, release.flags, release.extensible_kv_cache)
    except ServeArgsError as exc:
        return _usage_error(str(exc))
    if args.help_requested:
        print(USAGE)
        return 0
    try:  # GPUMGR_SIM_CUDA=1: real memory on a real card (gpumgr.sim.vllm_engine.cuda)
        state = cuda_state_from_env(os.environ, knobs.context_mib) or SimGpuState.from_env()
    except CudaUnavailable as exc:
        print(f"RuntimeError: {exc}", file=sys.stderr, flush=True)
        return 1
    if state is None:
        log("ERROR", "api_server.py", "GPUMGR_SIM_GPU_STATE is not set: no simulated GPU")
        print("RuntimeError: No CUDA GPUs are available", file=sys.stderr, flush=True)
        return 1
    engine = SimEngine(args, knobs, state)
    try:
        return asyncio.run(engine.run())
    except EngineExit as exc:
        engine.cleanup()
        engine.event("init_end" if not engine.init_done else "failed", ok=False, error=exc.message)
        log("ERROR", "core.py", "EngineCore failed to start.", engine.holder_pid)
        traceback_exit(exc.message)


if __name__ == "__main__":
    sys.exit(main())
