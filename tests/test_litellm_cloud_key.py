"""On a real LiteLLM 1.108.7 proxy: ``$OLLAMA_API_KEY`` goes to a keyless local Ollama entry,
and not to the entries ``gpumgr litellm-config`` writes (config/cloud_key.py, DESIGN.md §6).

One proxy serves the generated config for a registry whose Ollama Cloud key variable is
``OLLAMA_API_KEY``, plus one entry written the way the owner's hand-written config has it (local
Ollama, no ``api_key``). A recording fake Ollama shows what each request carried: the fact the
warning rests on (the hand-written entry gets the cloud key), and the fix (the generated entry
does not; the cloud gets the key).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx2
import pytest
import yaml

from test_litellm_proxy import MASTER_KEY, running_proxy  # noqa: E402 - skips without a proxy
from test_cloud_key_name import CLOUD, LOCAL, SECRET, gpumgr, registry, write

from fake_http import JsonServer, Reply, Request
from gpumgr.sim.harness import free_port

pytestmark = [pytest.mark.slow, pytest.mark.litellm]

HAND_WRITTEN = "hand-written-local"


def ollama_api(request: Request) -> Reply:
    """Enough of Ollama's API for LiteLLM's ``ollama_chat/`` (and its start-up ``/api/show``)."""
    if request.path == "/api/show":
        return Reply(200, {"model_info": {}, "details": {}})
    if request.path == "/api/tags":
        return Reply(200, {"models": []})
    if request.path == "/api/chat":
        body = json.loads(request.body or b"{}")
        return Reply(200, {
            "model": body.get("model", ""), "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "ok"}, "done": True,
            "done_reason": "stop", "prompt_eval_count": 1, "eval_count": 1,
        })
    return Reply(404, {"error": "not found"})


def chat_auth(server: JsonServer) -> list[str]:
    """The Authorization header of each chat request the server got, in order."""
    return [r.headers.get("Authorization", "") for r in server.received if r.path == "/api/chat"]


def test_litellm_sends_the_cloud_key_to_a_keyless_local_entry_but_not_to_gpumgrs(
    tmp_path: Path,
) -> None:
    with JsonServer(ollama_api) as local, JsonServer(ollama_api) as cloud:
        port_local = int(local.base_url.rsplit(":", 1)[1])
        cfg = write(tmp_path, registry(ollama_port=port_local, cloud_url=cloud.base_url))
        r = gpumgr("litellm-config", "--config-dir", str(cfg))
        assert r.returncode == 0, r.stderr
        data = yaml.safe_load(r.stdout)
        data["litellm_settings"].pop("callbacks")  # no daemon here: the filter is not the point
        data["model_list"].append({"model_name": HAND_WRITTEN, "litellm_params": {
            "model": f"ollama_chat/{LOCAL}", "api_base": local.base_url}})
        proxy_dir = tmp_path / "proxy"
        proxy_dir.mkdir()
        (proxy_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUMGR_", "LITELLM"))}
        env.update({"LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "OLLAMA_API_KEY": SECRET, "NO_PROXY": "*", "LITELLM_TELEMETRY": "False",
                    "DISABLE_SCHEMA_UPDATE": "True"})  # fmt: skip
        port = free_port()
        with running_proxy(proxy_dir, port, env, tmp_path / "litellm.log"), httpx2.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=30,
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        ) as client:
            def ask(model: str) -> None:
                resp = client.post("/v1/chat/completions", json={
                    "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
                assert resp.status_code == 200, resp.text[:300]

            ask(HAND_WRITTEN)
            assert chat_auth(local) == [f"Bearer {SECRET}"]  # the leak, as LiteLLM does it
            ask(LOCAL)
            assert chat_auth(local)[1] == "Bearer none"  # gpumgr's entry: not the cloud key
            ask(CLOUD)
            assert chat_auth(cloud) == [f"Bearer {SECRET}"]  # the cloud still gets its key
