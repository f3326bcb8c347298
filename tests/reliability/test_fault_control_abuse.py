"""Abuse of the control plane and the status listener: another user on the socket, calls
without (or with a wrong) token, path traversal in names, oversized and malformed bodies, and
schemathesis against the status listener's ``/openapi.json`` (no 5xx, ever).

One daemon for the module, with a control token (so that the TCP listener carries the control
routes and the token check is exercised). What is kept: the engine serving with the same pid,
the daemon answering, nothing outside the log directory readable through a name.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.helpers import free_port
from reliability.rig import QWEN_7B, WAIT_S, Rig, settings, vllm

pytestmark = pytest.mark.slow

TOKEN = "fault-suite-control-token-0123456789"
ENGINE = "qwen-7b"
SECRET_MARKER = "never-served-through-a-name"
EXAMPLES = 30
"""Generated cases per operation (bounded: the suite runs on a loaded 2-core machine)."""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, int]]:
    tmp = tmp_path_factory.mktemp("fault-abuse")
    (tmp / "secret.log").write_text(SECRET_MARKER)  # beside the log directory: ../secret
    r = Rig(tmp, vllm(ENGINE, free_port(), QWEN_7B), settings(),
            env={"GPUMGR_CONTROL_TOKEN": TOKEN})
    try:
        r.daemon.start()
        pid = int(r.daemon.wait_up(ENGINE, WAIT_S)["pid"])
        yield r, pid
        assert r.pid_of(ENGINE) == pid  # nothing below changed what runs
        assert r.daemon.stop() == 0
        assert TOKEN not in r.daemon.log_text()
    finally:
        r.close()


def test_the_socket_refuses_another_user(rig: tuple[Rig, int]) -> None:
    r, _ = rig
    sock = r.socket_path
    assert oct(sock.stat().st_mode & 0o777) == "0o660"
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None:
        pytest.skip("needs a system python3 to try the socket as another user")
    if os.geteuid() != 0:
        pytest.skip("needs root to run a probe as another user")
    os.chmod(r.daemon.runtime_dir, 0o755)  # the directory is not what keeps them out
    probe = subprocess.run(
        [system_python, "-c",
         "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])", str(sock)],
        user="nobody", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert probe.returncode != 0 and "PermissionError" in probe.stderr


def test_tcp_control_calls_need_exactly_the_token(rig: tuple[Rig, int]) -> None:
    r, pid = rig
    url = r.daemon.base_url + "/v1/control/stop"
    for headers in ({}, {"Authorization": "Bearer " + TOKEN[:-1]}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        refused = httpx2.post(url, json={"name": ENGINE}, headers=headers, timeout=5)
        assert refused.status_code == 401, (headers, refused.text)
    assert r.daemon.get("/v1/status").status_code == 200  # reading needs no token
    assert r.pid_of(ENGINE) == pid


@pytest.mark.parametrize("name", ["../secret", "..%2Fsecret", "%2e%2e%2fsecret", "%2e%2e",
                                  "..", "qwen-7b/../../secret", "/etc/passwd", "qwen-7b%00"])
def test_a_name_never_reaches_outside_the_configured_backends(rig: tuple[Rig, int], name: str) -> None:
    r, pid = rig
    with r.control_client(10) as c:
        logs = c.get(f"/v1/control/logs/{name}")
        assert logs.status_code in (400, 404, 422), (name, logs.status_code)
        assert SECRET_MARKER not in logs.text and "root:" not in logs.text
        started = c.post("/v1/control/start", json={"name": name.replace("%2F", "/")})
        assert started.status_code in (400, 404, 422), (name, started.text)
    assert r.pid_of(ENGINE) == pid


def test_oversized_and_malformed_bodies_are_refused_with_4xx(rig: tuple[Rig, int]) -> None:
    r, pid = rig
    big = {"name": "x" * 5000}
    with r.control_client(10) as c:
        assert c.post("/v1/control/restart", json=big).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds on what arrives
            yield b'{"name": "'
            for _ in range(10):
                yield b"y" * 1024
            yield b'"}'

        assert c.post("/v1/control/restart", content=chunks(),
                      headers={"Content-Type": "application/json"}).status_code == 413
        lying = _raw(r, b"POST /v1/control/restart HTTP/1.1\r\nHost: localhost\r\n"
                        b"Content-Type: application/json\r\nContent-Length: abc\r\n\r\n{}")
        assert lying.startswith(b"HTTP/1.1 4"), lying[:80]
        for body in (b"{", b"[]", b"null", b'{"name": 7}', b'{"name": ""}',
                     b'{"name": "qwen-7b", "rm": true}', b'{"old": "qwen-7b"}', b"\xff\xfe"):
            answer = c.post("/v1/control/restart", content=body,
                            headers={"Content-Type": "application/json"})
            assert answer.status_code in (400, 413, 422), (body, answer.status_code, answer.text)
        swap = c.post("/v1/control/swap", json={"old": ENGINE, "new": ENGINE, "timeout_s": -1})
        assert swap.status_code == 422
    assert r.pid_of(ENGINE) == pid
    assert r.daemon.backend(ENGINE)["available"]


def _raw(r: Rig, request: bytes) -> bytes:
    """Send bytes no HTTP client would send over the control socket; the answer's first bytes."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(r.socket_path))
        s.sendall(request)
        return s.recv(4096)


def test_schemathesis_finds_no_5xx_on_the_status_listener(rig: tuple[Rig, int]) -> None:
    """Every operation of ``/openapi.json`` (the control routes included: a token is set, and
    these calls carry none) with generated parameters and bodies: never a 5xx. Driven with
    hypothesis directly (schemathesis' own pytest plugin does not load under this pytest)."""
    from hypothesis import HealthCheck, Phase, given
    from hypothesis import settings as hsettings

    schemathesis = pytest.importorskip("schemathesis")  # the `test` extra installs it

    r, pid = rig
    schema = schemathesis.openapi.from_url(r.daemon.base_url + "/openapi.json")
    # endless streams: the event stream and a followed log
    schema = schema.exclude(path="/v1/events").exclude(path_regex="/logs/")
    seen: list[str] = []
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        seen.append(operation.label)

        @hsettings(max_examples=EXAMPLES, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            response = case.call(timeout=10)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                f"{response.text[:200]}")

        call()
    assert any("/v1/status" in x for x in seen) and any("/v1/control/" in x for x in seen), seen
    assert failures == [], failures[:5]
    assert r.pid_of(ENGINE) == pid
