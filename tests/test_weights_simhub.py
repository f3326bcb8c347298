"""The simulated hub speaks the hub's protocol: the headers and error codes huggingface_hub reads."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from gpumgr.sim.catalog import materialise_catalog, write_repo
from gpumgr.sim.hub import HubSwitches, SimHubHandle, start_sim_hub

QWEN7 = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"
DATA = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[SimHubHandle]:
    materialise_catalog(tmp_path, [QWEN7])
    write_repo(tmp_path, "org/plain", {"data.bin": DATA, "sub/dir/note.txt": b"hi\n"})
    handle = start_sim_hub(tmp_path, switches=HubSwitches())
    try:
        yield handle
    finally:
        handle.stop()


def test_revision_info_tree_and_resolve_agree_on_the_commit(hub: SimHubHandle) -> None:
    with httpx2.Client(base_url=hub.url) as c:
        info = c.get(f"/api/models/{QWEN7}/revision/main").json()
        tree = c.get(f"/api/models/{QWEN7}/tree/{info['sha']}", params={"recursive": "true"}).json()
        head = c.head(f"/{QWEN7}/resolve/main/config.json")
    assert len(info["sha"]) == 40 and {"rfilename": "config.json"} in info["siblings"]
    shard = next(e for e in tree if e["path"] == "model-00001-of-00002.safetensors")
    assert shard["lfs"]["size"] == shard["size"] and len(shard["lfs"]["oid"]) == 64
    assert head.status_code == 200 and head.headers["X-Repo-Commit"] == info["sha"]
    assert head.headers["ETag"].strip('"') and int(head.headers["Content-Length"]) > 0
    assert not any(h.lower().startswith("x-xet") for h in head.headers)


def test_range_requests_get_206_with_content_range(hub: SimHubHandle) -> None:
    with httpx2.Client(base_url=hub.url) as c:
        r = c.get("/org/plain/resolve/main/data.bin", headers={"Range": "bytes=1000-"})
        tree = c.get("/api/models/org/plain/tree/main", params={"recursive": "true"}).json()
    assert r.status_code == 206 and r.content == DATA[1000:]
    assert r.headers["Content-Range"] == f"bytes 1000-{len(DATA) - 1}/{len(DATA)}"
    assert {e["path"] for e in tree} == {"data.bin", "sub", "sub/dir", "sub/dir/note.txt"}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/models/org/missing/revision/main", 404, "RepoNotFound"),
        ("/api/models/org/plain/revision/v2", 404, "RevisionNotFound"),
        ("/org/plain/resolve/main/nope.json", 404, "EntryNotFound"),
    ],
)
def test_errors_carry_the_hub_error_code_header(hub: SimHubHandle, path: str, status: int, code: str) -> None:
    r = httpx2.get(hub.url + path)
    assert r.status_code == status and r.headers["X-Error-Code"] == code


def test_gated_repo_answers_401_without_token_403_with_a_wrong_one(hub: SimHubHandle) -> None:
    hub.switches.gated.add("org/plain")
    hub.switches.tokens.add("good")
    url = hub.url + "/org/plain/resolve/main/data.bin"
    assert httpx2.get(url).status_code == 401
    assert httpx2.get(url, headers={"Authorization": "Bearer bad"}).status_code == 403
    assert httpx2.get(url, headers={"Authorization": "Bearer good"}).content == DATA
    assert httpx2.get(url).headers["X-Error-Code"] == "GatedRepo"


def test_drop_switch_cuts_a_body_once(hub: SimHubHandle) -> None:
    hub.switches.drop_after_bytes = 4096
    url = hub.url + "/org/plain/resolve/main/data.bin"
    with pytest.raises(httpx2.RemoteProtocolError):
        httpx2.get(url)
    assert httpx2.get(url).content == DATA


def test_hub_runs_as_a_module_serving_the_catalog() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "gpumgr.sim.hub", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening http://127.0.0.1:")
        url = line.split()[1]
        assert httpx2.get(f"{url}/api/models/{QWEN7}").json()["id"] == QWEN7
        assert httpx2.get(f"{url}/_sim/requests").json()[0]["path"] == f"/api/models/{QWEN7}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
