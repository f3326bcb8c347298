"""The callback's status follower survives any byte sequence from a status URL.

A real HTTP server on 127.0.0.1 (raw sockets, so it can send anything) serves a valid document on
``/v1/status`` and, on ``/v1/events``, whatever hypothesis draws (raw bytes or SSE-looking frames
with hostile ids, data and sizes) followed by one valid event naming a fresh backend. One follower
runs for the whole run in its own loop; after every example it must have applied that valid
event (it kept following), and its task must never have ended.
"""

from __future__ import annotations

import asyncio
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpumgr.integrations.litellm.follower import StatusFollower

EPOCH = "f00dfeed0001"
MAX_SEQ = "9" * 18


def _doc(epoch: str = EPOCH, seq: int = 0, names: tuple[str, ...] = ("base",)) -> bytes:
    return json.dumps({"seq": seq, "epoch": epoch, "adoption_done": True,
                       "first_probe_round_done": True,
                       "backends": [{"name": n, "state": "up"} for n in names]}).encode()


class RawStatusServer(socketserver.ThreadingTCPServer):
    """``/v1/status``: ``doc`` (or ``bad_doc`` once); ``/v1/events``: ``script``, then heartbeats
    until ``generation`` changes (then it hangs up, so the follower reconnects to the next)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.doc = _doc()
        self.bad_doc: bytes | None = None
        self.script = b""
        self.generation = 0
        self.stopping = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/status"


class _Handler(socketserver.BaseRequestHandler):
    server: RawStatusServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return
            head += chunk
        path = head.split(b" ", 2)[1].decode()
        try:
            if path.endswith("/status"):
                body, self.server.bad_doc = (self.server.bad_doc or self.server.doc), None
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
                return
            generation = self.server.generation
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Connection: close\r\n\r\n" + self.server.script)
            while self.server.generation == generation and not self.server.stopping:
                time.sleep(0.02)
                sock.sendall(b": heartbeat\n\n")
        except OSError:
            pass


class FollowerThread:
    """A follower on its own event loop in a thread (as in the router's process)."""

    def __init__(self, url: str) -> None:
        self.follower = StatusFollower(url, on_change=lambda: None, poll_s=0.01,
                                       backoff_cap_s=0.05, timeout_s=2.0, stream_idle_s=2.0)
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        while self.task is None:
            time.sleep(0.001)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.follower.run())
        try:
            self.loop.run_until_complete(self.task)
        except BaseException:  # noqa: BLE001 - cancelled at the end; anything else is checked
            pass

    def stop(self) -> None:
        assert self.task is not None
        self.loop.call_soon_threadsafe(self.task.cancel)
        self._thread.join(5)

    def wait(self, predicate: Callable[[StatusFollower], bool], what: str,
             timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.follower):
            assert self.task is not None and not self.task.done(), "the follower's task ended"
            if time.monotonic() > deadline:
                raise AssertionError(f"the follower did not get {what}: {self.follower.status}")
            time.sleep(0.005)


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[RawStatusServer, FollowerThread]]:
    server = RawStatusServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    follower = FollowerThread(server.url)
    try:
        follower.wait(lambda f: f.status is not None and "base" in f.status.backends, "the doc")
        yield server, follower
    finally:
        server.stopping = True
        follower.stop()
        server.shutdown()
        server.server_close()


_counter = iter(range(10**9))


def _serve(server: RawStatusServer, garbage: bytes, bad_doc: bytes | None = None) -> str:
    """Garbage, then one valid event for a fresh backend; its name."""
    name = f"marker-{next(_counter)}"
    valid = (b"\n\nevent: backend\nid: " + f"{EPOCH}:{MAX_SEQ}".encode() + b"\ndata: "
             + json.dumps({"name": name, "state": "up"}).encode() + b"\n\n")
    server.bad_doc = bad_doc
    server.script = garbage + valid
    server.generation += 1
    return name


HOSTILE_VALUES = [
    "²", "9" * 4301, f"{EPOCH}:" + "9" * 5000, "[" * 200_000 + "]" * 200_000,
    '{"name": "x", "state": "up", "models": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"name": 12345678901234567890123, "state": {}}', '{"state": "up"}', "null", "1e999999",
    '{"name": "n", "state": "up", "x": ' + "9" * 5000 + "}", "\x00", "\ud800".encode(
        "utf-8", "surrogatepass").decode("utf-8", "replace"), "x" * (2 * 1024 * 1024),
]
FIELDS = ["data", "id", "event", "retry", "", "dat", "ID", "event ", "data\x00"]
ENDS = ["\n", "\r\n", "\r"]

line = st.builds(
    lambda f, sep, v: f + sep + v,
    st.sampled_from(FIELDS), st.sampled_from([": ", ":", "", " : "]),
    st.one_of(st.sampled_from(HOSTILE_VALUES), st.text(max_size=80),
              st.sampled_from(["backend", "message", "", f"{EPOCH}:1", "otherepoch:3", "7-2"])),
)
frames = st.lists(st.tuples(line, st.sampled_from(ENDS), st.booleans()), max_size=12).map(
    lambda items: "".join(text + end + (end if blank else "") for text, end, blank in items)
    .encode("utf-8", "surrogatepass"))
garbage = st.one_of(st.binary(max_size=4096), frames)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(garbage=garbage, bad_doc=st.one_of(st.none(), st.binary(max_size=512),
                                          st.sampled_from([b"[" * 100_000, b"9" * 5000])))
@example(garbage=b"event: backend\nid: \xc2\xb2\ndata: {\"name\": \"q\", \"state\": \"up\"}\n\n",
         bad_doc=None)
@example(garbage=b"event: backend\nid: " + b"9" * 4301 + b"\ndata: {\"name\": \"q\"}\n\n",
         bad_doc=None)
@example(garbage=b"event: backend\nid: 1\ndata: " + b"[" * 100_000 + b"\n\n", bad_doc=None)
@example(garbage=b"data: " + b"z" * (3 * 1024 * 1024) + b"\n\n", bad_doc=b"[" * 100_000)
def test_the_follower_keeps_following_after_any_bytes(
    rig: tuple[RawStatusServer, FollowerThread], garbage: bytes, bad_doc: bytes | None,
) -> None:
    server, follower = rig
    name = _serve(server, garbage, bad_doc)
    follower.wait(lambda f: f.status is not None and name in f.status.backends,
                  f"the valid event after the garbage ({name})")


def test_a_new_epoch_with_a_lower_seq_is_a_new_daemon_and_an_old_seq_a_replay(
    rig: tuple[RawStatusServer, FollowerThread],
) -> None:
    server, follower = rig

    def frame(eid: str, name: str) -> bytes:
        return (f"event: backend\nid: {eid}\ndata: "
                + json.dumps({"name": name, "state": "up"}) + "\n\n").encode()

    # One stream: seq 100 of the first daemon, then a replay (seq 50: skipped), then seq 2 of a
    # new daemon (a new epoch; its document is re-read first, then the event applied).
    server.doc = _doc(EPOCH, 90)
    server.script = frame(f"{EPOCH}:100", "first") + frame(f"{EPOCH}:50", "replayed")
    server.generation += 1
    follower.wait(lambda f: f.status is not None and "first" in f.status.backends
                  and f.status.seq == 100, "seq 100")
    assert follower.follower.status is not None
    assert "replayed" not in follower.follower.status.backends
    server.doc = _doc("newdaemon0002", 1, ("base", "from-new-doc"))
    server.script = frame(f"{EPOCH}:100", "first") + frame("newdaemon0002:2", "second")
    server.generation += 1
    follower.wait(lambda f: f.status is not None and "second" in f.status.backends,
                  "the new daemon's event")
    status = follower.follower.status
    assert status is not None
    assert (status.epoch, status.seq) == ("newdaemon0002", 2)
    assert "from-new-doc" in status.backends  # re-read on the new epoch
    server.doc = _doc()
