"""The simulated engine's HTTP API: vLLM's OpenAI-compatible routes, metrics and sleep mode.

Answers are deterministic (the same request gives the same text) and generated one token at a
time with a configurable delay, so that in-flight requests exist for drain and busy tests.
At most ``max_num_seqs`` requests run; the rest wait, as vLLM's scheduler makes them, and both
counts appear in ``/metrics`` under vLLM's names.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gpumgr.sim.vllm_engine.http import Request, Response, StreamingResponse

DEFAULT_MAX_TOKENS = 16
_BASE_ANSWER = ["This", " is", " a", " simulated", " answer"]


@dataclass(frozen=True)
class EngineInfo:
    """The started engine's facts the API reports."""

    served_names: tuple[str, ...]
    model_path: str
    max_model_len: int
    max_num_seqs: int
    kv_cache_tokens: int
    fraction: float
    api_key: str | None
    sleep_endpoints: bool
    token_delay_s: float
    version: str = "0.33.0"
    """The release imitated (``GET /version``)."""


SleepHook = Callable[[bool], Awaitable[str | None]]
"""Called with True to sleep, False to wake; returns an error message when it cannot."""


def answer_tokens(model: str, prompt: str, max_tokens: int) -> tuple[list[str], str]:
    """A deterministic answer (tokens, finish reason): fixed words, the model, a prompt digest."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    words = [*_BASE_ANSWER, " from", f" {model}", " to", f" {digest}", "."]
    if len(words) > max_tokens:
        return words[:max_tokens], "length"
    return words, "stop"


def _prompt_of(body: dict[str, Any], chat: bool) -> str:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        parts = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            parts.append(content if isinstance(content, str) else json.dumps(content))
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return "\n".join(str(p) for p in prompt)
    if not isinstance(prompt, str):
        raise ValueError("prompt must be a string")
    return prompt


def _error(status: int, message: str, kind: str) -> Response:
    return Response.of_json({"error": {"message": message, "type": kind, "param": None,
                                       "code": status}}, status)  # fmt: skip


class EngineApi:
    """Routes and live counters of one simulated engine."""

    def __init__(self, info: EngineInfo, sleep_hook: SleepHook) -> None:
        self.info = info
        self._sleep_hook = sleep_hook
        self._slots = asyncio.Semaphore(info.max_num_seqs)
        self.running = 0
        self.waiting = 0
        self._tokens_in_flight: dict[int, int] = {}
        self._next_id = 0
        self._next_slot = 0
        self.dead = False
        self.sleeping = False
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.success_total = 0
        self.created = int(time.time())

    # -- dispatch --------------------------------------------------------------------------
    async def handle(self, req: Request) -> Response | StreamingResponse:
        routes: dict[str, tuple[str, Callable[[Request], Awaitable[Any]]]] = {
            "/health": ("GET", self._health),
            "/ping": ("GET", self._health),
            "/version": ("GET", self._version),
            "/metrics": ("GET", self._metrics),
            "/v1/models": ("GET", self._models),
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completions),
        }
        if self.info.sleep_endpoints:
            routes |= {"/sleep": ("POST", self._sleep), "/wake_up": ("POST", self._wake_up),
                       "/is_sleeping": ("GET", self._is_sleeping)}  # fmt: skip
        route = routes.get(req.path)
        if route is None:
            return Response.of_json({"detail": "Not Found"}, 404)
        method, fn = route
        if req.method != method and not (method == "GET" and req.method == "HEAD"):
            return Response.of_json({"detail": "Method Not Allowed"}, 405)
        if req.path.startswith("/v1/") and not self._authorised(req):
            return Response.of_json({"error": "Unauthorized"}, 401)
        result: Response | StreamingResponse = await fn(req)
        return result

    def _authorised(self, req: Request) -> bool:
        key = self.info.api_key
        return key is None or req.headers.get("authorization") == f"Bearer {key}"

    # -- plain routes ----------------------------------------------------------------------
    async def _health(self, req: Request) -> Response:
        return Response(503 if self.dead else 200, b"")

    async def _version(self, req: Request) -> Response:
        return Response.of_json({"version": self.info.version})

    async def _models(self, req: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": self.created, "owned_by": "vllm",
             "root": self.info.model_path, "parent": None, "max_model_len": self.info.max_model_len}
            for name in self.info.served_names
        ]  # fmt: skip
        return Response.of_json({"object": "list", "data": data})

    def kv_cache_usage(self) -> float:
        used = sum(self._tokens_in_flight.values())
        return min(used / self.info.kv_cache_tokens, 1.0) if self.info.kv_cache_tokens else 0.0

    async def _metrics(self, req: Request) -> Response:
        labels = f'engine="0",model_name="{self.info.served_names[0]}"'
        gauges = [
            ("vllm:num_requests_running", "Number of requests in model execution batches.",
             "gauge", self.running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
             "gauge", self.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
             "gauge", self.kv_cache_usage()),
            ("vllm:prompt_tokens_total", "Number of prefill tokens processed.",
             "counter", self.prompt_tokens_total),
            ("vllm:generation_tokens_total", "Number of generation tokens processed.",
             "counter", self.generation_tokens_total),
            ("vllm:request_success_total", "Count of successfully processed requests.",
             "counter", self.success_total),
        ]  # fmt: skip
        out: list[str] = []
        for name, help_text, kind, value in gauges:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
                    f"{name}{{{labels}}} {float(value)}"]  # fmt: skip
        blocks = self.info.kv_cache_tokens // 16
        out += [
            "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
            "# TYPE vllm:cache_config_info gauge",
            f'vllm:cache_config_info{{block_size="16",engine="0",gpu_memory_utilization='
            f'"{self.info.fraction}",num_gpu_blocks="{blocks}"}} 1.0',
        ]
        body = ("\n".join(out) + "\n").encode()
        return Response(200, body, "text/plain; version=0.0.4; charset=utf-8")

    # -- sleep mode ------------------------------------------------------------------------
    async def _sleep(self, req: Request) -> Response:
        if not self.sleeping:
            error = await self._sleep_hook(True)
            if error:
                return _error(500, error, "InternalServerError")
            self.sleeping = True
        return Response(200, b"")

    async def _wake_up(self, req: Request) -> Response:
        if self.sleeping:
            error = await self._sleep_hook(False)
            if error:
                return _error(500, error, "InternalServerError")
            self.sleeping = False
        return Response(200, b"")

    async def _is_sleeping(self, req: Request) -> Response:
        return Response.of_json({"is_sleeping": self.sleeping})

    # -- generation ------------------------------------------------------------------------
    async def _chat(self, req: Request) -> Response | StreamingResponse:
        return await self._generate(req, chat=True)

    async def _completions(self, req: Request) -> Response | StreamingResponse:
        return await self._generate(req, chat=False)

    async def _generate(self, req: Request, chat: bool) -> Response | StreamingResponse:
        try:
            body = req.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            prompt = _prompt_of(body, chat)
            limit = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
            max_tokens = int(limit)
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc), "BadRequestError")
        model = body.get("model")
        if model not in self.info.served_names:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if self.dead:
            return _error(500, "EngineCore encountered an issue. See stack trace for the root cause.",
                          "InternalServerError")  # fmt: skip
        if self.sleeping:
            return _error(503, "The engine is sleeping; POST /wake_up first.", "ServiceUnavailable")
        tokens, finish = answer_tokens(str(model), prompt, max_tokens)
        prompt_tokens = max(1, len(prompt.split()))
        self._next_id += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-sim{self._next_id}"
        if body.get("stream"):
            return StreamingResponse(self._stream(rid, str(model), chat, tokens, finish, prompt_tokens))
        text = ""
        async for token in self._run(tokens, prompt_tokens):
            text += token
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                 "total_tokens": prompt_tokens + len(tokens)}  # fmt: skip
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return Response.of_json({"id": rid, "object": "chat.completion" if chat else "text_completion",
                                 "created": int(time.time()), "model": model, "choices": [choice],
                                 "usage": usage})  # fmt: skip

    async def _run(self, tokens: list[str], prompt_tokens: int) -> AsyncIterator[str]:
        """Yield ``tokens`` one per ``token_delay_s`` while holding one of ``max_num_seqs`` slots."""
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self._next_slot += 1
        key = self._next_slot
        self.running += 1
        self._tokens_in_flight[key] = prompt_tokens
        self.prompt_tokens_total += prompt_tokens
        try:
            for token in tokens:
                if self.info.token_delay_s > 0:
                    await asyncio.sleep(self.info.token_delay_s)
                self._tokens_in_flight[key] += 1
                self.generation_tokens_total += 1
                yield token
            self.success_total += 1
        finally:
            self.running -= 1
            self._tokens_in_flight.pop(key, None)
            self._slots.release()

    async def _stream(self, rid: str, model: str, chat: bool, tokens: list[str], finish: str,
                      prompt_tokens: int) -> AsyncIterator[bytes]:  # fmt: skip
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choice: dict[str, Any]) -> bytes:
            payload = {"id": rid, "object": kind, "created": created, "model": model,
                       "choices": [{"index": 0, "logprobs": None, **choice}]}  # fmt: skip
            return f"data: {json.dumps(payload)}\n\n".encode()

        if chat:
            yield event({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        async for token in self._run(tokens, prompt_tokens):
            piece = {"delta": {"content": token}} if chat else {"text": token}
            yield event({**piece, "finish_reason": None})
        yield event({"delta": {}, "finish_reason": finish} if chat
                    else {"text": "", "finish_reason": finish})  # fmt: skip
        yield b"data: [DONE]\n\n"
