"""Racing the control plane: 50 reloads, alternately valid and invalid, while a swap runs; then
100 control calls at once.

A reload is read when it arrives: an invalid file is answered 400 at once (even mid-swap); a
valid one waits its turn behind the swap and is applied after it, in arrival order.

One daemon for the module: ``qwen-7b`` and ``deepseek`` share a port (swap partners, deepseek
loading slowly so the swap lasts), ``keeper`` serves on another port all along. What is kept:
the swap completes; the last valid file is the configuration in force; nothing whose launch
settings did not change restarts (pids kept, one engine start per swap); one mutation at a
time, every other call refused at once with 409; and, over the whole module, never two engines
initialising at the same time (from the engines' own events file).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers import free_port
from reliability.rig import DEEPSEEK, QWEN_7B, WAIT_S, Rig, open_inits, settings, vllm, wait_for

pytestmark = pytest.mark.slow

RELOADS = 50
CALLS = 100


def _providers(p1: int, p2: int, version: int) -> str:
    marker = f"""
  marker-{version}:
    type: openai_compatible
    base_url: http://127.0.0.1:9
    status: active
    models: [m{version}]
"""
    return ("providers:"
            + vllm("qwen-7b", p1, QWEN_7B, fraction=0.42, description=f"v{version}")
            + vllm("deepseek", p1, DEEPSEEK, status="standby", fraction=0.45,
                   env={"GPUMGR_SIM_LOAD_SECONDS": "4"}, description=f"v{version}")
            + vllm("keeper", p2, QWEN_7B, fraction=0.42, served="kept", description=f"v{version}")
            + marker)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, int, int]]:
    tmp = tmp_path_factory.mktemp("fault-races")
    p1, p2 = free_port(), free_port()
    r = Rig(tmp, _providers(p1, p2, 0).removeprefix("providers:"), settings())
    try:
        r.daemon.start()
        r.daemon.wait_up("qwen-7b", WAIT_S)
        r.daemon.wait_up("keeper", WAIT_S)
        yield r, p1, p2
        # over the whole module: never two engines initialising at once on the card
        overlaps = list(open_inits(r.engine_events()))
        assert overlaps == [], overlaps[:3]
        assert r.daemon.stop() == 0
        assert r.allocations() == {}
    finally:
        r.close()


def test_50_reloads_alternating_valid_and_invalid_during_a_swap_last_valid_wins(
    rig: tuple[Rig, int, int],
) -> None:
    r, p1, p2 = rig
    d = r.daemon
    keeper = r.pid_of("keeper")
    providers = d.config_dir / "providers.yaml"
    swap = r.popen_cli("swap", "qwen-7b", "deepseek")
    answers: list[tuple[int, int]] = []  # (version, HTTP status); odd versions are invalid
    lock = threading.Lock()
    during = 0  # reloads sent while the swap was still running
    waiting: list[threading.Thread] = []

    def reload(version: int) -> None:
        status, _ = r.control("reload", timeout_s=120)
        with lock:
            answers.append((version, status))

    def accepted() -> int:
        return d.log_text().count('"reload.accepted"')

    try:
        assert swap.stdout is not None
        wait_for(lambda: "draining qwen-7b" in (swap.stdout.readline() or ""), WAIT_S, "the swap")  # type: ignore[union-attr]
        last_valid = 0
        for version in range(1, RELOADS + 1):
            text = _providers(p1, p2, version)
            if version % 2:
                text = text.replace("max_model_len: 2048", "max_model_len: lots", 1)
            else:
                last_valid = version
            providers.write_text(text)
            during += swap.poll() is None
            if version % 2:
                reload(version)  # refused at once, swap or not
                continue
            seen = accepted()  # a valid one is read now, then waits for its turn
            waiting.append(threading.Thread(target=reload, args=(version,), daemon=True))
            waiting[-1].start()
            wait_for(lambda: accepted() > seen, WAIT_S, f"reload {version} read")
        out, err = swap.communicate(timeout=WAIT_S)
        for t in waiting:
            t.join(WAIT_S)
    finally:
        if swap.poll() is None:
            swap.kill()
    assert swap.returncode == 0, err
    assert during >= 10, f"only {during} reloads came during the swap: make deepseek load longer"
    print(f"\n{during} of {RELOADS} reloads sent while the swap ran")
    answers.sort()
    assert [s for v, s in answers if v % 2] == [400] * (RELOADS // 2)
    assert [s for v, s in answers if not v % 2] == [200] * (RELOADS // 2)
    new = d.wait_up("deepseek", WAIT_S)
    assert d.backend("qwen-7b")["state"] == "stopped"
    # the last valid file is in force: its marker backend and no other
    markers = {b["name"] for b in d.status()["backends"] if b["name"].startswith("marker-")}
    assert markers == {f"marker-{last_valid}"}
    # nothing unchanged restarted: the bystander kept its pid, deepseek started exactly once
    assert r.pid_of("keeper") == keeper
    starts = [e for e in r.inits() if e["port"] == p1 and e["pid"] == new["pid"]]
    assert len(starts) == 1 and len([e for e in r.inits() if e["port"] == p2]) == 1
    desired = json.loads((d.tmp / "state" / "desired.json").read_text())
    assert set(desired["backends"]) == {"deepseek", "keeper"}


def test_100_concurrent_control_calls_run_one_mutation_at_a_time_and_answer_every_other_at_once(
    rig: tuple[Rig, int, int],
) -> None:
    r, _, _ = rig
    d = r.daemon
    d.wait_up("deepseek", WAIT_S)
    d.wait_up("keeper", WAIT_S)
    offset = len(d.log_text())
    barrier = threading.Barrier(CALLS)
    results: list[tuple[int, str, float]] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        name = "keeper" if i % 2 else "deepseek"
        with r.control_client(timeout_s=WAIT_S) as c:
            barrier.wait(30)
            t0 = time.monotonic()
            resp = c.post("/v1/control/restart", json={"name": name})
            took = time.monotonic() - t0  # the answer's head: accepted (200) or refused (409)
            lines = [json.loads(x) for x in resp.text.splitlines() if x.strip()]
        error = "" if resp.status_code != 200 else str(lines[-1].get("error", ""))
        with lock:
            results.append((resp.status_code, error, took))

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(CALLS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert len(results) == CALLS
    assert {s for s, _, _ in results} <= {200, 409}
    ran = [x for x in results if x[0] == 200 and not x[1]]
    # The slot is claimed when a request is accepted, so every other call is refused at once
    # (409), never accepted and then refused in its stream.
    busy = [x for x in results if x[0] == 409]
    assert len(ran) >= 1 and len(ran) + len(busy) == CALLS, results  # >1 only if one ended first
    slowest_refusal = max(took for s, _, took in results if s == 409)
    assert slowest_refusal < 5, f"a refusal waited {slowest_refusal:.2f} s"
    # the mutations that ran never overlapped (from the daemon's own log)
    events = [json.loads(x) for x in d.log_text()[offset:].splitlines() if '"operation.' in x]
    depth = 0
    for e in events:
        depth += 1 if e["event"] == "operation.begin" else -1
        assert depth in (0, 1), "two mutations ran at once"
    assert sum(e["event"] == "operation.begin" for e in events) == len(ran)
    d.wait_up("deepseek", WAIT_S)
    d.wait_up("keeper", WAIT_S)
    print(f"\n{CALLS} concurrent calls: {len(ran)} ran, "
          f"{sum(s == 409 for s, _, _ in results)} refused with 409, "
          f"{sum(s == 200 and e.startswith('busy:') for s, e, _ in results)} accepted then 'busy', "
          f"slowest refusal {slowest_refusal * 1000:.0f} ms")
