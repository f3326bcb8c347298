"""Each provider's first status, before any probe has run."""

from __future__ import annotations

from gpumgr.backend_state import BackendState
from gpumgr.config.registry import Provider
from gpumgr.status.seed import initial_backends


def test_first_status_of_each_kind_of_provider() -> None:
    providers = [
        Provider.model_validate({
            "name": "qwen-7b", "type": "vllm", "status": "active",
            "base_url": "http://127.0.0.1:8001", "gpu_memory_utilization": 0.62,
            "models": [{"name": "qwen-coder-vllm", "aliases": ["coder"]}],
        }),
        Provider.model_validate({
            "name": "ollama", "type": "ollama", "base_url": "http://127.0.0.1:11434",
            "models": ["llama3:8b"],
        }),
        Provider.model_validate({
            "name": "dolphin", "type": "vllm", "status": "disabled",
            "base_url": "http://127.0.0.1:8004", "models": ["dolphin"],
        }),
        Provider.model_validate({
            "name": "remote", "type": "openai_compatible", "status": "template",
            "base_url": "http://YOUR-HOST:PORT", "models": ["x"],
        }),
    ]
    qwen, ollama, dolphin, remote = initial_backends(providers)
    assert (qwen.state, qwen.managed, qwen.port) == (BackendState.STOPPED, True, 8001)
    assert qwen.models == ["qwen-coder-vllm", "coder"]
    assert qwen.gpu_memory_utilization == 0.62
    assert (ollama.state, ollama.managed) == (BackendState.UNKNOWN, False)
    assert dolphin.state is BackendState.DISABLED and not dolphin.managed
    assert dolphin.detail == "status: disabled in providers.yaml"
    assert remote.state is BackendState.DISABLED and remote.port is None
    assert not any(b.available for b in (qwen, ollama, dolphin, remote))
