"""``gpumgr status`` for a person: at 80 columns the reason a backend is down is always shown."""

from __future__ import annotations

import re

from rich.console import Console

from gpumgr.cli.status import render_table

DOC = {
    "gpus": [{"index": 0, "name": "Quadro RTX 5000", "memory_used_mib": 14563,
              "memory_total_mib": 16384, "memory_free_mib": 1821,
              "processes": [{"pid": 19437, "used_mib": 14263, "owner": "qwen-7b"}]}],
    "backends": [
        {"name": "ollama", "type": "ollama", "state": "down", "models": ["qwen2.5-coder:7b"],
         "port": 11434, "pid": None, "restarts": 0,
         "detail": "ollama: ConnectError: All connection attempts failed"},
        {"name": "qwen-7b", "type": "vllm", "state": "up", "models": ["qwen-coder-vllm"],
         "port": 8001, "pid": 19437, "gpu_memory_utilization": 0.84, "restarts": 2,
         "detail": "health 200, running 0, waiting 0, kv 0%"},
        {"name": "deepseek-6.7b", "type": "vllm", "state": "failed", "models": ["deepseek"],
         "port": 8003, "pid": None, "restarts": 5,
         "detail": "6 crashes within 300s (limit 5); last error: torch.OutOfMemoryError: CUDA "
                   "out of memory. Tried to allocate 2.00 GiB"},
        {"name": "ollama-cloud", "type": "ollama_cloud", "state": "rate_limited", "suspect": False,
         "models": ["deepseek-v3.1:671b-cloud"], "port": 443, "pid": None, "restarts": 0,
         "detail": "HTTP 429: weekly usage limit reached; next probe in 120 s"},
    ],
}


def _render(width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(render_table(DOC, width))
    return console.export_text()


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9.:%()]+", text)


def test_at_80_columns_every_word_of_every_reason_is_on_screen_and_no_line_is_wider() -> None:
    out = _render(80)
    assert max(len(line) for line in out.splitlines()) <= 80
    flat = re.sub(r"\s+", "", out)
    for b in DOC["backends"]:
        assert b["name"] in out  # type: ignore[index]
        for word in _words(b["detail"]):  # type: ignore[index]
            assert word in flat, (word, out)
    assert "failed" in out and "rate_limited" in out


def test_a_wide_terminal_also_shows_type_models_port_util_and_restarts() -> None:
    out = _render(180)
    for column in ("type", "models", "port", "util", "restarts"):
        assert column in out
    assert "0.84" in out and "qwen-coder-vllm" in out
