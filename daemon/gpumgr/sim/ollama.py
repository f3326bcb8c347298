"""Simulated Ollama: a real HTTP server speaking the parts of Ollama's API gpumgr and LiteLLM use.

``python -m gpumgr.sim.ollama --port P [--pulled a,b] [--loaded a] [--size a=MiB] [--mode ok|down|hang]``

``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/generate`` and ``/api/chat`` (NDJSON streaming
like Ollama, ``"stream": false`` too), ``keep_alive`` (``0`` unloads; expiry unloads in the
background). Loaded models register their VRAM on the simulated GPU (``$GPUMGR_SIM_GPU_STATE``,
card from ``$CUDA_VISIBLE_DEVICES`` or the first) under this process's pid as ``ollama``.
Failure switches (``--mode`` at start, ``POST /_sim/mode {"mode": …}`` at run time): ``down``
answers 503 everywhere, ``hang`` accepts requests and never answers. ``--port 0`` binds a free
port; the first stdout line is JSON ``{"event": "listening", "port": …, "pid": …}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gpumgr.sim.gpu import SimGpuState
from gpumgr.sim.ollama_models import DEFAULT_SIZE_MIB, ModelStore, canonical, parse_keep_alive, rfc3339

MODES = ("ok", "down", "hang")
VERSION = "0.12.6"


class SimOllama:
    """The server's state: the model store, the failure mode and the per-token delay."""

    def __init__(self, store: ModelStore, mode: str = "ok", token_delay_s: float = 0.0) -> None:
        self.store = store
        self.mode = mode
        self.token_delay_s = token_delay_s
        self._never = asyncio.Event()

    async def gate(self) -> Response | None:
        """Apply the failure mode: 503 when down, wait forever when hung, None when serving."""
        if self.mode == "down":
            return JSONResponse({"error": "simulated outage"}, status_code=503)
        if self.mode == "hang":
            await self._never.wait()
        return None

    # -- handlers --------------------------------------------------------------------------------
    async def version(self, request: Request) -> Response:
        return await self.gate() or JSONResponse({"version": VERSION})

    async def tags(self, request: Request) -> Response:
        return await self.gate() or JSONResponse(self.store.tags())

    async def ps(self, request: Request) -> Response:
        return await self.gate() or JSONResponse(self.store.ps())

    async def generate(self, request: Request) -> Response:
        return await self.gate() or await self._complete(request, chat=False)

    async def chat(self, request: Request) -> Response:
        return await self.gate() or await self._complete(request, chat=True)

    async def get_mode(self, request: Request) -> Response:
        return JSONResponse({"mode": self.mode})

    async def set_mode(self, request: Request) -> Response:
        body = await request.json()
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in MODES:
            return JSONResponse({"error": f"mode must be one of {', '.join(MODES)}"}, status_code=400)
        self.mode = mode
        return JSONResponse({"mode": mode})

    async def _complete(self, request: Request, chat: bool) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "invalid JSON body"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be an object"}, status_code=400)
        model = body.get("model")
        if not model:
            return JSONResponse({"error": "model is required"}, status_code=400)
        try:
            keep_alive_s = parse_keep_alive(body.get("keep_alive"))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if not self.store.is_pulled(model):
            return JSONResponse({"error": f"model '{model}' not found"}, status_code=404)
        name = canonical(model)
        empty = not body.get("messages") if chat else not body.get("prompt")
        if empty:
            # a bare request only loads or unloads, as Ollama does
            if keep_alive_s == 0:
                self.store.unload(name)
                reason = "unload"
            else:
                self.store.load(name, keep_alive_s)
                reason = "load"
            return JSONResponse(self._final(model, chat, "", reason, 0))
        self.store.load(name, keep_alive_s)
        words = f"This is a simulated answer from {name}.".split(" ")
        stream = body.get("stream", True) is not False

        def finish() -> None:
            if keep_alive_s == 0:
                self.store.unload(name)
            else:
                self.store.load(name, keep_alive_s)  # the expiry counts from the end of the request

        if not stream:
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s * len(words))
            finish()
            return JSONResponse(self._final(model, chat, " ".join(words), "stop", len(words)))
        return StreamingResponse(
            self._chunks(model, chat, words, finish), media_type="application/x-ndjson"
        )

    async def _chunks(
        self, model: str, chat: bool, words: list[str], finish: Callable[[], None]
    ) -> AsyncIterator[bytes]:
        for i, w in enumerate(words):
            piece = w if i == 0 else " " + w
            doc: dict[str, Any] = {"model": model, "created_at": rfc3339(time.time()), "done": False}
            if chat:
                doc["message"] = {"role": "assistant", "content": piece}
            else:
                doc["response"] = piece
            yield (json.dumps(doc) + "\n").encode()
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
        finish()
        yield (json.dumps(self._final(model, chat, "", "stop", len(words))) + "\n").encode()

    @staticmethod
    def _final(model: str, chat: bool, text: str, reason: str, tokens: int) -> dict[str, Any]:
        doc: dict[str, Any] = {"model": model, "created_at": rfc3339(time.time()), "done": True,
                               "done_reason": reason}
        if chat:
            doc["message"] = {"role": "assistant", "content": text}
        else:
            doc["response"] = text
        if reason == "stop":
            doc.update(total_duration=tokens * 1_000_000, load_duration=0, prompt_eval_count=1,
                       eval_count=tokens, eval_duration=tokens * 1_000_000)
        return doc

    async def expire_loop(self, period_s: float = 0.1) -> None:
        while True:
            self.store.expire()
            await asyncio.sleep(period_s)


def build_app(sim: SimOllama) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(sim.expire_loop())
        try:
            yield
        finally:
            task.cancel()
            sim.store.release_all()

    return Starlette(
        routes=[
            Route("/", lambda r: Response("Ollama is running"), methods=["GET", "HEAD"]),
            Route("/api/version", sim.version, methods=["GET"]),
            Route("/api/tags", sim.tags, methods=["GET"]),
            Route("/api/ps", sim.ps, methods=["GET"]),
            Route("/api/generate", sim.generate, methods=["POST"]),
            Route("/api/chat", sim.chat, methods=["POST"]),
            Route("/_sim/mode", sim.get_mode, methods=["GET"]),
            Route("/_sim/mode", sim.set_mode, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def _names(values: list[str]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gpumgr.sim.ollama", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11434)
    p.add_argument("--pulled", "--models", action="append", default=[], metavar="A,B",
                   help="models present in /api/tags (--models is the same list)")
    p.add_argument("--loaded", action="append", default=[], metavar="A,B",
                   help="pulled models loaded at start (kept until unloaded)")
    p.add_argument("--size", action="append", default=[], metavar="NAME=MIB",
                   help=f"a model's size (default {DEFAULT_SIZE_MIB} MiB)")
    p.add_argument("--mode", choices=MODES, default="ok")
    p.add_argument("--token-delay-s", type=float, default=0.0)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    import uvicorn  # imported here: the module is also imported by tests for its helpers

    sizes = {canonical(k): int(v) for k, v in (s.rsplit("=", 1) for s in args.size)}
    pulled = {canonical(n): sizes.get(canonical(n), DEFAULT_SIZE_MIB) for n in _names(args.pulled)}
    state = SimGpuState.from_env()
    store = ModelStore(pulled, state, ModelStore.pick_gpu(state))
    for n in _names(args.loaded):
        if not store.is_pulled(n):
            raise SystemExit(f"--loaded {n}: not in --pulled")
        store.load(n, float("inf"))
    sim = SimOllama(store, args.mode, args.token_delay_s)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    config = uvicorn.Config(build_app(sim), log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    print(json.dumps({"event": "listening", "host": args.host, "port": sock.getsockname()[1],
                      "pid": os.getpid()}), flush=True)
    try:
        await server.serve(sockets=[sock])
    finally:
        store.release_all()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
