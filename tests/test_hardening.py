"""Issue 13's hardening: redaction before every cut, the Host guard, credentials, quiet stops."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gpumgr.api.hosts import AllowedHosts, HostPolicy, host_name
from gpumgr.api.server import ApiServer
from gpumgr.config.registry import Provider
from gpumgr.engines.ollama_cloud import probe_ollama_cloud
from gpumgr.engines.probe_http import failure_from_exception
from gpumgr.engines.probe_result import Stopwatch, short
from gpumgr.redaction import REDACTED, provider_secrets, redactor_for
from gpumgr.secrets import read_secret, read_secret_with_source
from gpumgr.weights.credentials import resolve_token
from gpumgr.config.settings import HubSettings
from tests.fake_http import JsonServer, Reply, Request

KEY = "ocsk_" + "Zq8Xw3Lm9Pt2Rv7Ny4Hb6Jc1Kd5Fg0Se8Ua3W"  # 42 characters
assert len(KEY) == 42


def _fragments(text: str, secret: str, n: int = 4) -> list[str]:
    """Every piece of ``secret`` of ``n`` or more characters that ``text`` shows."""
    return [secret[i:i + n] for i in range(len(secret) - n + 1) if secret[i:i + n] in text]


# -- (a) secrets masked before any truncation -----------------------------------------------------


def test_every_cut_point_of_an_echoed_authorization_header_leaks_nothing() -> None:
    """The upstream echoes the header (whole, or itself cut at any point); gpumgr then shortens
    to its limit at any point. No 4-character fragment of the key may survive either cut."""
    redact = redactor_for([KEY])
    echo = f"401 Unauthorized: request had Authorization: Bearer {KEY} (invalid)"
    for upstream_cut in range(len(echo) + 1):
        body = echo[:upstream_cut]
        for limit in range(1, len(body) + 2):
            published = short(redact(body), limit)
            leaked = _fragments(published.replace(REDACTED, ""), KEY)
            assert not leaked, (upstream_cut, limit, published)


def test_the_old_order_would_have_leaked_38_characters() -> None:
    """What issue 13 measured: shorten first, redact second, publishes 38 of 42 characters."""
    echo = f"Authorization: Bearer {KEY}"
    cut = short(echo, len("Authorization: Bearer ") + 39)  # the cut lands inside the key
    assert len(max(_fragments(cut, KEY, 38) or [""], key=len)) == 38
    assert not _fragments(short(redactor_for([KEY])(echo), len(echo) - 3), KEY)


async def test_cloud_probe_publishes_no_fragment_of_an_echoed_key() -> None:
    def echo(request: Request) -> Reply:
        return Reply(401, ("x" * 120 + f" Authorization: {request.headers.get('Authorization')}").encode())

    with JsonServer(echo) as server:
        async with httpx2.AsyncClient() as client:
            result = await probe_ollama_cloud(client, server.base_url, KEY, ["m"], 2.0)
    assert result.detail.startswith("HTTP 401")
    assert not _fragments(result.detail.replace(REDACTED, ""), KEY), result.detail


def test_transport_errors_are_redacted_before_they_are_shortened() -> None:
    exc = OSError(f"connect failed for https://user:{KEY}@ollama.com " + "y" * 150)
    for cut in range(1, 260):
        text = failure_from_exception(OSError(str(exc)[:cut]), Stopwatch(), "cloud", (KEY,)).detail
        assert not _fragments(text.replace(REDACTED, ""), KEY), (cut, text)


# -- credentials ---------------------------------------------------------------------------------


def test_secrets_come_from_the_environment_then_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "OLLAMA_CLOUD_API_KEY").write_text(KEY + "\n")
    (tmp_path / "gpumgr_HF_TOKEN").write_text("hf_" + "t" * 30)  # the unit loads a directory
    (tmp_path / "EMPTY").write_text("\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert read_secret("OLLAMA_CLOUD_API_KEY", env) == KEY
    assert read_secret_with_source("OLLAMA_CLOUD_API_KEY", env).source == "credential OLLAMA_CLOUD_API_KEY"  # type: ignore[union-attr]
    assert read_secret("OLLAMA_CLOUD_API_KEY", {**env, "OLLAMA_CLOUD_API_KEY": "from-env"}) == "from-env"
    assert read_secret("EMPTY", env) is None and read_secret("MISSING", env) is None
    assert read_secret("../etc/passwd", env) is None
    assert read_secret("OLLAMA_CLOUD_API_KEY", {}) is None
    token = resolve_token(HubSettings(), env)
    assert token is not None and token.value == "hf_" + "t" * 30 and "credential" in token.source
    cloud = Provider(name="c", type="ollama_cloud", base_url="https://ollama.com",
                     env_var="OLLAMA_CLOUD_API_KEY")
    assert provider_secrets([cloud], env) == [KEY]  # so it is redacted everywhere too


def test_vllm_children_do_not_inherit_the_credentials_directory() -> None:
    from gpumgr.sd_notify import child_environment

    assert "CREDENTIALS_DIRECTORY" not in child_environment({"CREDENTIALS_DIRECTORY": "/run/x", "A": "1"})


# -- (b) the Host guard ---------------------------------------------------------------------------


def test_host_policy() -> None:
    assert host_name("LOCALHOST:9400") == "localhost" and host_name("[::1]:9400") == "::1"
    p = HostPolicy("127.0.0.1")
    for ok in ("127.0.0.1:9400", "localhost", "[::1]:9400", "127.0.0.2", None):
        assert p.allows(ok), ok
    for bad in ("evil.example", "evil.example:9400", "localhost.evil.example", "10.0.0.5", ""):
        assert not p.allows(bad), bad
    assert HostPolicy("gpu1.lan").allows("gpu1.lan:9400")
    wild = HostPolicy("0.0.0.0", own_names=["gpu1"])
    assert wild.allows("10.0.0.5:9400") and wild.allows("gpu1") and not wild.allows("evil.example")
    assert p.allows("10.0.0.5:9400", local_address="10.0.0.5")


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_a_real_listener_refuses_a_forged_host() -> None:
    server = ApiServer.tcp(AllowedHosts(_ok_app, listen_host="127.0.0.1"), "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            good = await client.get("/v1/status")
            forged = await client.get("/v1/status", headers={"Host": "evil.example"})
            named = await client.get("/v1/status", headers={"Host": f"localhost:{server.port}"})
    finally:
        await server.stop()
    assert good.status_code == 200 and named.status_code == 200
    assert forged.status_code == 421 and "rebinding" in forged.json()["detail"]


async def test_the_status_app_has_the_guard_and_no_swagger_page(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from gpumgr.api.status_app import create_status_app
    from gpumgr.status.document import DaemonInfo
    from gpumgr.status.publisher import StatusPublisher

    pub = StatusPublisher(daemon=DaemonInfo(pid=os.getpid(), started_at=datetime.now(UTC)),
                          status_path=tmp_path / "status.json")
    server = ApiServer.tcp(create_status_app(pub), "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/v1/status")).status_code == 200
            assert (await client.get("/v1/status", headers={"Host": "rebind.evil"})).status_code == 421
            assert (await client.get("/docs")).status_code == 404
            assert (await client.get("/openapi.json")).status_code == 200
    finally:
        await server.stop()


# -- (c) the simulated engine's SIGTERM leaves no traceback ---------------------------------------


def test_sigterm_during_a_stream_leaves_no_traceback(tmp_path: Path) -> None:
    from test_sim_vllm_engine import GIB, UUID, make_snapshot

    from tests.helpers import free_port

    from gpumgr.sim.gpu import SimGpuSpec, SimGpuState

    card = SimGpuState(tmp_path / "state.json")
    card.ensure([SimGpuSpec(0, UUID, memory_total_mib=16384, display_used_mib=300)])
    snap = make_snapshot(tmp_path, int(5.2 * GIB))
    port = free_port()
    env = {**os.environ, "GPUMGR_SIM_GPU_STATE": str(card.path), "CUDA_VISIBLE_DEVICES": UUID,
           "GPUMGR_SIM_LOAD_SECONDS": "0.1", "GPUMGR_SIM_TOKEN_DELAY_S": "0.05"}
    log = tmp_path / "engine.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpumgr.sim.vllm", "serve", str(snap), "--served-model-name", "m",
             "--host", "127.0.0.1", "--port", str(port), "--gpu-memory-utilization", "0.6",
             "--max-model-len", "4096"], env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx2.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.05)
        streaming = threading.Event()

        def stream() -> None:
            try:
                with httpx2.stream("POST", url + "/v1/chat/completions", timeout=10, json={
                        "model": "m", "messages": [{"role": "user", "content": "hi"}],
                        "stream": True, "max_tokens": 500}) as r:
                    for _ in r.iter_lines():
                        streaming.set()
            except httpx2.HTTPError:
                pass

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        assert streaming.wait(10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        t.join(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    text = log.read_text()
    assert "Shutting down" in text
    assert "Traceback" not in text and "CancelledError" not in text, text


# -- the CUDA mode's bookkeeping, with a stand-in for torch --------------------------------------


class _FakeCuda:
    def __init__(self) -> None:
        self.total = 80 * 1024**3
        self.context = 600 * 1024**2
        self.held = 0

    def mem_get_info(self) -> tuple[int, int]:
        return self.total - self.context - self.held, self.total

    def get_device_properties(self, i: int) -> Any:
        return type("P", (), {"name": "Fake H100", "major": 9, "minor": 0})()

    def empty_cache(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def is_available(self) -> bool:
        return True


class _FakeTorch:
    uint8 = "uint8"

    def __init__(self) -> None:
        self.cuda = _FakeCuda()

    def zeros(self, *a: Any, **k: Any) -> None:
        return None

    def empty(self, n: int, **k: Any) -> Any:
        cuda = self.cuda
        cuda.held += n

        class Block:
            def __del__(self) -> None:
                cuda.held -= n

        return Block()


def test_cuda_mode_holds_its_budget_and_reports_real_free_memory() -> None:
    from gpumgr.sim.vllm_engine.cuda import CHUNK_MIB, CudaGpuState, cuda_requested

    assert cuda_requested({"GPUMGR_SIM_CUDA": "1"}) and not cuda_requested({})
    torch = _FakeTorch()
    state = CudaGpuState(torch, "GPU-x", context_mib=500)
    snap = state.read()
    assert snap.gpus[0].memory_total_mib == 80 * 1024 and snap.gpus[0].compute_capability == "9.0"
    assert snap.free_mib("GPU-x") == 80 * 1024 - 600 - 0 or snap.free_mib("GPU-x") >= 80 * 1024 - 600 - 1
    snap = state.allocate(os.getpid(), "GPU-x", 500 + 10_000, "VLLM::EngineCore")
    held_mib = torch.cuda.held // 1024**2
    assert held_mib == -(-10_000 // CHUNK_MIB) * CHUNK_MIB
    assert abs(snap.free_mib("GPU-x") - (80 * 1024 - 600 - held_mib)) <= 1
    state.allocate(os.getpid(), "GPU-x", 500 + 1000, "VLLM::EngineCore")
    assert torch.cuda.held // 1024**2 == 4 * CHUNK_MIB
    state.release(os.getpid())
    assert torch.cuda.held == 0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio
_ = asyncio
