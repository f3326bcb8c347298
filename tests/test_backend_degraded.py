"""``degraded``: an engine that serves with less KV cache than the plan promised (vLLM >= 0.34).

It is reached only through a KV cache reading (``up`` ↔ ``degraded``, or ``starting`` →
``degraded`` once a probe proves the engine serves), is not ``available`` (DESIGN.md §5: only
``up`` is), and a router still uses it when nothing else remains, like a busy backend.
"""

from __future__ import annotations

from gpumgr.backend_state import BackendState as S
from gpumgr.health import machine
from gpumgr.health.machine import Verdict
from gpumgr.integrations.litellm.matching import Located, Verdict as RouteVerdict, choose, verdict
from gpumgr.integrations.litellm.status_view import parse_backend
from gpumgr.status.document import BackendStatus

SHORT = "KV cache 20,000 tokens < the plan's minimum 32,768 (planned 40,000)"


def test_a_shortfall_read_while_starting_makes_the_first_good_probe_degraded_not_up() -> None:
    h = machine.initial("qwen-7b", S.STARTING, 0.0, "spawned")
    step = machine.on_kv_reading(h, SHORT, 1.0)
    assert step.transition is None and step.health.state is S.STARTING
    step = machine.on_probe(step.health, Verdict.SUCCESS, "health 200", 2.0, retry_attempts=3)
    assert step.health.state is S.DEGRADED and step.health.reason == SHORT
    again = machine.on_probe(step.health, Verdict.SUCCESS, "health 200", 3.0, retry_attempts=3)
    assert again.transition is None and again.health.state is S.DEGRADED


def test_up_and_degraded_move_both_ways_on_a_reading() -> None:
    up = machine.initial("qwen-7b", S.UP, 0.0, "health 200")
    down = machine.on_kv_reading(up, SHORT, 1.0)
    assert down.transition is not None and (down.transition.old, down.transition.new) == (S.UP, S.DEGRADED)
    back = machine.on_kv_reading(down.health, "", 2.0)
    assert back.health.state is S.UP and back.health.shortfall == ""


def test_a_degraded_engine_fails_probes_like_an_up_one_and_a_restart_forgets_the_shortfall() -> None:
    h = machine.on_kv_reading(machine.initial("q", S.UP, 0.0), SHORT, 1.0).health
    for i in range(3):
        h = machine.on_probe(h, Verdict.FAILURE, "refused", 2.0 + i, retry_attempts=3).health
    assert h.state is S.DOWN and h.shortfall == ""
    h = machine.on_lifecycle(h, S.STARTING, "spawned pid 9", 6.0, pid=9).health
    h = machine.on_probe(h, Verdict.SUCCESS, "health 200", 7.0, retry_attempts=3).health
    assert h.state is S.UP


def test_a_degraded_engine_can_be_drained_slept_and_stopped() -> None:
    h = machine.on_kv_reading(machine.initial("q", S.UP, 0.0), SHORT, 1.0).health
    for target in (S.DRAINING, S.SLEEPING, S.STOPPING, S.RESTARTING):
        assert machine.on_lifecycle(h, target, "operator", 2.0).health.state is target


def test_degraded_is_not_available_in_the_status_document() -> None:
    b = BackendStatus(name="q", type="vllm", state=S.DEGRADED, kv_cache_tokens_planned=40_000,
                      kv_cache_tokens_actual=20_000, vllm_version="0.34.0")  # fmt: skip
    doc = b.model_dump(mode="json")
    assert doc["available"] is False and doc["state"] == "degraded"
    assert (doc["kv_cache_tokens_planned"], doc["kv_cache_tokens_actual"]) == (40_000, 20_000)


def _located(state: str, available: bool, name: str = "q") -> Located:
    return Located(0, parse_backend({"name": name, "state": state, "available": available}), None)


def test_the_router_keeps_a_degraded_deployment_only_when_it_is_the_last() -> None:
    fresh, informed = (lambda _i: True), [True]
    degraded = verdict(_located("degraded", False), None, fresh, informed)
    assert degraded is RouteVerdict.DEGRADED
    ok = verdict(_located("up", True, "r"), None, fresh, informed)
    assert choose(["deg", "ok"], [degraded, ok]) == ["ok"]
    assert choose(["deg"], [degraded]) == ["deg"]
    down = verdict(_located("down", False, "d"), None, fresh, informed)
    assert choose(["deg", "down"], [degraded, down]) == ["deg"]
