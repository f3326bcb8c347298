"""The simulated Hugging Face hub: a real HTTP server speaking the endpoints ``snapshot_download`` uses.

It serves repositories from a plain directory (``ROOT/<org>/<name>/...``, see
``gpumgr.sim.catalog``) so that gpumgr's weights code runs the real ``huggingface_hub`` client,
unchanged, over real sockets:

- ``GET /api/models/{repo}[/revision/{rev}]`` — repo info with the resolved commit ``sha``;
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=`` — the file listing (sizes, LFS oids);
- ``HEAD|GET /{repo}/resolve/{rev}/{path}`` — ``X-Repo-Commit``, ``ETag``, ``Content-Length``,
  ``Accept-Ranges`` and ``Range`` (206) support;
- errors carry the hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``, ``GatedRepo``) that the client maps to its typed errors.

No xet headers are ever sent, so ``hf_xet`` is never engaged. Switches (``HubSwitches``, mutable
while running) make it drop a connection mid-file, answer 401/403 for gated repositories, or be
slow. ``GET /_sim/requests`` lists the requests served (not itself counted), for tests that
assert how much — or how little — went over the wire.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from gpumgr.sim.hub_repos import RepoFileInfo, SimRepo, describe_file, tree_listing

CHUNK_BYTES = 16 * 1024


@dataclass
class HubSwitches:
    """Chaos and access switches; the server reads them on every request, so tests may flip them."""

    drop_after_bytes: int | None = None
    """Cut a file's body after this many bytes (each file at most once, ``drop_times`` in all)."""
    drop_times: int = 1
    slow_bytes_per_s: int | None = None
    """Throttle every file body to this rate."""
    gated: set[str] = field(default_factory=set)
    """Repos whose files need ``Authorization: Bearer <one of tokens>`` (401 without, 403 wrong)."""
    tokens: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class SimRequest:
    """One request the hub served (``range`` is the Range header, if any)."""

    method: str
    path: str
    range: str | None = None


class SimHub:
    """The hub's state: where repos live, the switches, and the log of requests served."""

    def __init__(self, repos_dir: Path, switches: HubSwitches | None = None) -> None:
        self.repos_dir = repos_dir
        self.switches = switches or HubSwitches()
        self.requests: list[SimRequest] = []
        self._lock = threading.Lock()
        self._dropped: set[str] = set()
        self._cache: dict[Path, tuple[tuple[int, int], RepoFileInfo]] = {}

    def log(self, request: SimRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def file_gets(self, repo_id: str, path: str) -> list[SimRequest]:
        """The GETs of one file's body (any revision), in order."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and "/resolve/" in r.path
                    and r.path.startswith(f"/{repo_id}/") and r.path.endswith(f"/{path}")]

    def should_drop(self, key: str) -> bool:
        """True once per file, while the drop budget lasts."""
        with self._lock:
            sw = self.switches
            if sw.drop_after_bytes is None or key in self._dropped or len(self._dropped) >= sw.drop_times:
                return False
            self._dropped.add(key)
            return True

    def repo(self, repo_id: str) -> SimRepo | None:
        root = self.repos_dir.joinpath(*repo_id.split("/"))
        if len(repo_id.split("/")) != 2 or ".." in repo_id.split("/") or not root.is_dir():
            return None
        files: dict[str, RepoFileInfo] = {}
        for p in sorted(root.rglob("*")):
            if p.is_file():
                st = p.stat()
                key = (st.st_size, st.st_mtime_ns)
                with self._lock:
                    cached = self._cache.get(p)
                if cached is None or cached[0] != key:
                    cached = (key, describe_file(p))
                    with self._lock:
                        self._cache[p] = cached
                files[p.relative_to(root).as_posix()] = cached[1]
        return SimRepo(repo_id, root, files)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # -- plumbing ---------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        h = {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})}
        self._json(status, {"error": message}, h)

    def _revision(self, repo: SimRepo, rev: str) -> str | None:
        commit = repo.commit
        return commit if rev in ("main", commit) else None

    # -- routes -----------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        if url.path == "/_sim/requests":
            with hub._lock:
                snapshot = list(hub.requests)
            self._json(200, [{"method": r.method, "path": r.path, "range": r.range} for r in snapshot])
            return
        hub.log(SimRequest(self.command, self.path, self.headers.get("Range")))
        parts = [unquote(s) for s in url.path.strip("/").split("/")]
        try:
            if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
                self._api(parts[2:], parse_qs(url.query))
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            else:
                self._error(404, "NotFound", f"no route for {url.path}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _api(self, parts: list[str], query: dict[str, list[str]]) -> None:
        repo_id = "/".join(parts[:2])
        repo = self.server.hub.repo(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        rest = parts[2:]
        if not rest or (rest[0] == "revision" and len(rest) == 2):
            rev = rest[1] if rest else "main"
            commit = self._revision(repo, rev)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return
            gated = repo_id in self.server.hub.switches.gated
            self._json(200, {
                "_id": hashlib.md5(repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
                "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": commit,
                "private": False, "gated": "manual" if gated else False, "disabled": False,
                "lastModified": "2026-01-01T00:00:00.000Z", "library_name": "transformers",
                "tags": ["safetensors", "awq", "simulated"],
                "siblings": [{"rfilename": p} for p in sorted(repo.files)],
            })
            return
        if rest and rest[0] == "tree" and len(rest) >= 2:
            commit = self._revision(repo, rest[1])
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
                return
            prefix = "/".join(rest[2:]).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            self._json(200, tree_listing(repo, prefix, recursive))
            return
        self._error(404, "NotFound", "unknown api route")

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        hub = self.server.hub
        repo = hub.repo(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        commit = self._revision(repo, rev)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return
        if repo_id in hub.switches.gated:
            auth = self.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
            if token is None or token not in hub.switches.tokens:
                status = 401 if token is None else 403
                self._error(status, "GatedRepo", f"Access to model {repo_id} is restricted. "
                            "You must have access to it and be authenticated to access it.")
                return
        info = repo.files.get(path)
        if info is None:
            self._error(404, "EntryNotFound", f"{path} does not exist on \"{rev}\"",
                        {"X-Repo-Commit": commit})
            return
        self._send_file(repo.root.joinpath(*path.split("/")), info, commit, f"{repo_id}/{path}")

    def _send_file(self, file: Path, info: RepoFileInfo, commit: str, key: str) -> None:
        hub = self.server.hub
        start, end = 0, info.size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng.removeprefix("bytes=").split(",")[0].partition("-")
            start = int(first) if first else 0
            end = min(int(last), info.size - 1) if last else info.size - 1
            if start >= info.size and info.size > 0:
                self._send(416, b"", {"Content-Range": f"bytes */{info.size}"})
                return
            status = 206
        length = max(end - start + 1, 0)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{info.etag}"')
        self.send_header("X-Repo-Commit", commit)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{info.size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        sw = hub.switches
        drop_at = None
        if sw.drop_after_bytes is not None and length > sw.drop_after_bytes and hub.should_drop(key):
            drop_at = sw.drop_after_bytes
        sent = 0
        with open(file, "rb") as f:
            f.seek(start)
            while sent < length:
                n = min(CHUNK_BYTES, length - sent)
                if drop_at is not None:
                    n = min(n, drop_at - sent)
                chunk = f.read(n)
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
                if drop_at is not None and sent >= drop_at:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                rate = hub.switches.slow_bytes_per_s
                if rate:
                    time.sleep(len(chunk) / rate)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], hub: SimHub) -> None:
        super().__init__(addr, _Handler)
        self.hub = hub


@dataclass
class SimHubHandle:
    """A running in-process hub: its URL, its state (switches, request log) and how to stop it."""

    url: str
    hub: SimHub
    stop: Callable[[], None]

    @property
    def switches(self) -> HubSwitches:
        return self.hub.switches

    def __enter__(self) -> SimHubHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sim_hub(
    repos_dir: Path, *, port: int = 0, host: str = "127.0.0.1", switches: HubSwitches | None = None,
    cleanup: Path | None = None,
) -> SimHubHandle:
    """Serve ``repos_dir`` from a background thread; ``stop()`` shuts it down (and removes ``cleanup``)."""
    hub = SimHub(repos_dir, switches)
    server = _Server((host, port), hub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="gpumgr-sim-hub", daemon=True)
    thread.start()
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)

    bound_host, bound_port = server.server_address[:2]
    return SimHubHandle(url=f"http://{bound_host!s}:{bound_port}", hub=hub, stop=stop)


def start_catalog_hub(*, port: int = 0, switches: HubSwitches | None = None) -> SimHubHandle:
    """A hub serving the shipped catalog from a private temporary directory (removed on stop)."""
    from gpumgr.sim.catalog import materialise_catalog

    tmp = Path(tempfile.mkdtemp(prefix="gpumgr-sim-hub-"))
    materialise_catalog(tmp)
    return start_sim_hub(tmp, port=port, switches=switches, cleanup=tmp)


@contextmanager
def hub_endpoint(configured: str | None) -> Iterator[str]:
    """The simulated hub to use: ``simulate.hub_endpoint`` when set, else a catalog hub started
    for the duration of the block (``gpumgr pull --simulate`` and the daemon in simulation)."""
    if configured:
        yield configured.rstrip("/")
        return
    handle = start_catalog_hub()
    try:
        yield handle.url
    finally:
        handle.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpumgr.sim.hub", description="The simulated Hugging Face hub.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--repos", type=Path, help="directory of ORG/NAME repositories (default: the catalog)")
    ap.add_argument("--gated", action="append", default=[], metavar="REPO")
    ap.add_argument("--token", action="append", default=[], help="a token accepted for gated repos")
    ap.add_argument("--drop-after-bytes", type=int)
    ap.add_argument("--drop-times", type=int, default=1)
    ap.add_argument("--slow-bytes-per-s", type=int)
    args = ap.parse_args(argv)
    switches = HubSwitches(drop_after_bytes=args.drop_after_bytes, drop_times=args.drop_times,
                           slow_bytes_per_s=args.slow_bytes_per_s, gated=set(args.gated),
                           tokens=set(args.token))
    if args.repos is None:
        handle = start_catalog_hub(port=args.port, switches=switches)
    else:
        handle = start_sim_hub(args.repos, port=args.port, host=args.host, switches=switches)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"listening {handle.url}", flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
