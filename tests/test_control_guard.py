"""The control routes refuse on the headers, before reading a body: a real daemon, real sockets.

A 256 MiB body with no (or a wrong) token is answered 401 at once and the daemon's RSS does not
grow; an over-sized body with a good token (or on the unix socket) is 413 without being read."""

from __future__ import annotations

import json
import socket
import time

import psutil
import pytest

from gpumgr.sim.harness import FAST_HEALTH_YAML, FAST_LIFECYCLE_YAML, DaemonHarness

pytestmark = pytest.mark.slow

TOKEN = "control-token-" + "k" * 24
BIG = 256 * 1024 * 1024
CHUNK = b"x" * (1024 * 1024)


def _rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _post_huge(sock: socket.socket, host: str, headers: str, total: int = BIG) -> tuple[int, int]:
    """Announce ``total`` body bytes, then stream them until the server answers or hangs up;
    return (HTTP status, body bytes sent)."""
    sock.sendall(
        f"POST /v1/control/start HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{headers}\r\n".encode())
    sent = 0
    sock.setblocking(False)
    answer = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            answer += sock.recv(65536)
            if b"\r\n" in answer:
                break
        except BlockingIOError:
            pass
        except OSError:
            break
        if sent < total:
            try:
                sent += sock.send(CHUNK[: min(len(CHUNK), total - sent)])
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:  # the server closed: read what it said
                sock.setblocking(True)
                sock.settimeout(5)
                answer += sock.recv(65536)
                break
        else:
            time.sleep(0.01)
    status_line = answer.split(b"\r\n", 1)[0].decode()
    return int(status_line.split()[1]), sent


def _request(sock: socket.socket, host: str, raw_headers: str, body: bytes) -> tuple[int, bytes]:
    sock.sendall(f"POST /v1/control/start HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                 f"Content-Type: application/json\r\n{raw_headers}\r\n".encode() + body)
    data = b""
    sock.settimeout(10)
    while chunk := sock.recv(65536):
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def _chunked(body: bytes) -> bytes:
    out = b""
    for i in range(0, len(body), 1000):
        part = body[i:i + 1000]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> object:
    tmp = tmp_path_factory.mktemp("guard")
    d = DaemonHarness(tmp, "providers: {}\n",
                      FAST_HEALTH_YAML.format(restart_after_s=60) + FAST_LIFECYCLE_YAML,
                      env={"GPUMGR_CONTROL_TOKEN": TOKEN})
    d.start()
    try:
        yield d
    finally:
        d.cleanup()


def _tcp(d: DaemonHarness) -> tuple[socket.socket, str]:
    host, port = d.base_url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port))), f"{host}:{port}"


def _unix(d: DaemonHarness) -> tuple[socket.socket, str]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(d.runtime_dir / "gpumgr.sock"))
    return s, "localhost"


@pytest.mark.parametrize("auth", ["", "Authorization: Bearer wrong-token-wrong-token\r\n"])
def test_a_256_mib_body_without_the_token_is_401_at_once_and_the_rss_does_not_grow(
    daemon: DaemonHarness, auth: str,
) -> None:
    assert daemon.proc is not None
    before = _rss_mib(daemon.proc.pid)
    sock, host = _tcp(daemon)
    with sock:
        status, sent = _post_huge(sock, host, f"{auth}Content-Length: {BIG}\r\n")
    after = _rss_mib(daemon.proc.pid)
    print(f"RSS before {before:.1f} MiB, after {after:.1f} MiB, body sent {sent / 2**20:.1f} MiB")
    assert status == 401
    assert sent < BIG // 4  # answered long before the body was through
    assert after - before < 16


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_an_over_sized_body_with_a_good_token_is_413_without_reading_it(
    daemon: DaemonHarness, where: str,
) -> None:
    assert daemon.proc is not None
    before = _rss_mib(daemon.proc.pid)
    sock, host = _tcp(daemon) if where == "tcp" else _unix(daemon)
    with sock:
        status, sent = _post_huge(
            sock, host, f"Authorization: Bearer {TOKEN}\r\nContent-Length: {BIG}\r\n")
    after = _rss_mib(daemon.proc.pid)
    assert status == 413
    assert sent < BIG // 4
    assert after - before < 16


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_a_chunked_body_over_4_kib_is_413_after_4_kib(daemon: DaemonHarness, where: str) -> None:
    sock, host = _tcp(daemon) if where == "tcp" else _unix(daemon)
    body = json.dumps({"name": "x" * 6000}).encode()
    with sock:
        status, answer = _request(
            sock, host, f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n",
            _chunked(body))
    assert status == 413, answer
    assert b"4096" in answer


def test_a_small_body_with_a_wrong_token_is_401_not_422(daemon: DaemonHarness) -> None:
    sock, host = _tcp(daemon)
    with sock:
        status, answer = _request(sock, host, "Authorization: Bearer nope\r\nContent-Length: 3\r\n",
                                  b"{x]")
    assert status == 401, answer


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_a_good_request_still_reaches_the_route(daemon: DaemonHarness, where: str) -> None:
    sock, host = _tcp(daemon) if where == "tcp" else _unix(daemon)
    body = json.dumps({"name": "no-such-backend"}).encode()
    for framing in (f"Content-Length: {len(body)}\r\n", "Transfer-Encoding: chunked\r\n"):
        sock, host = _tcp(daemon) if where == "tcp" else _unix(daemon)
        payload = body if framing.startswith("Content") else _chunked(body)
        with sock:
            status, answer = _request(sock, host, f"Authorization: Bearer {TOKEN}\r\n{framing}",
                                      payload)
        assert status == 404, answer  # the route ran: an unknown name
