"""The one fit decision (``gpumgr.plan.decide``): properties over random cards, running engines,
Ollama models and policies, then each caller's case (start, swap beside and after, wake, restart
after an out-of-memory exit, ``gpumgr plan``'s set)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumgr.gpu import OWNER_OLLAMA, GpuInfo, GpuProcess
from gpumgr.plan import InstanceRequest, OllamaModel, estimate
from gpumgr.plan.decide import AfterOom, Decision, Room, decide
from gpumgr.plan.oom import allows

MIB = 1 << 20
GIB = 1 << 30
POLICIES = ("never", "unload_idle", "unload_all")


def _request(name: str, weights_mib: int, max_len: int = 4096, seqs: int = 4,
             pinned: float | None = None) -> InstanceRequest:
    e = estimate(weights_bytes=weights_mib * MIB, kv_bytes_per_token=128 * 1024,
                 max_model_len=max_len, max_num_seqs=seqs, enforce_eager=False)
    return InstanceRequest(name, e, pinned)


def _card(total: int, processes: list[GpuProcess]) -> GpuInfo:
    used = sum(p.used_bytes or 0 for p in processes)
    return GpuInfo(0, "GPU-test", "test card", total, used, max(0, total - used),
                   processes=tuple(processes), compute_capability="8.9")


def _held(r: InstanceRequest, fraction: float, total: int) -> int:
    """What a running engine holds: its context plus vLLM's budget for its fraction."""
    return r.estimate.context_bytes + math.ceil(total * fraction)


@st.composite
def scene(draw: st.DrawFn) -> dict:  # type: ignore[type-arg]
    total = draw(st.sampled_from([8192, 16384, 24576, 49152, 81920])) * MIB
    procs = [GpuProcess(1, draw(st.integers(0, total // 4 // MIB)) * MIB)]  # display, unknown
    models = tuple(OllamaModel(f"m{i}", draw(st.integers(1, 4096)) * MIB)
                   for i in range(draw(st.integers(0, 3))))
    if models:
        procs.append(GpuProcess(2, sum(m.vram_bytes for m in models), owner=OWNER_OLLAMA))
    reqs: list[InstanceRequest] = []
    running: dict[str, float] = {}
    for i in range(draw(st.integers(0, 2))):
        r = _request(f"r{i}", draw(st.integers(256, 8192)), draw(st.sampled_from([1024, 4096])))
        f = draw(st.integers(5, 50)) / 100
        held = _held(r, f, total)
        if sum(p.used_bytes or 0 for p in procs) + held > total:
            continue
        procs.append(GpuProcess(100 + i, held, owner=r.provider))
        reqs.append(r)
        running[r.provider] = f
    starting = [f"s{i}" for i in range(draw(st.integers(1, 2)))]
    reqs += [_request(s, draw(st.integers(256, 16384)),
                      draw(st.sampled_from([1024, 4096, 16384])), draw(st.integers(1, 64)))
             for s in starting]
    gone = frozenset(n for n in running if draw(st.booleans()))
    residual = {n: 300 * MIB for n in gone if draw(st.booleans())}
    return {
        "gpu": _card(total, procs), "requests": reqs, "starting": starting, "running": running,
        "gone": gone, "residual": residual, "ollama": models,
        "room": Room(draw(st.integers(0, 1024)) * MIB, draw(st.integers(0, 2048)) * MIB,
                     draw(st.sampled_from(POLICIES))),
    }


def _decide(s: dict, **kw: object) -> Decision:  # type: ignore[type-arg]
    args = {"room": s["room"], "running_fractions": s["running"], "gone": s["gone"],
            "residual": s["residual"], "ollama": s["ollama"], **kw}
    return decide(s["gpu"], s["requests"], s["starting"], **args)  # type: ignore[arg-type]


def _vllm_start_checks(s: dict, d: Decision) -> None:  # type: ignore[type-arg]
    """vLLM's own start check for each engine that starts, one at a time, on the card as it will
    be (gone ones left, keeping their residual; unloaded models' memory back; the starting
    ones' old engines, if any, stopped). Reserve and Ollama's reservation are gpumgr's, not
    vLLM's: not counted here, so this is weaker than the plan's own accounting."""
    assert d.plan is not None
    gpu = s["gpu"]
    free = gpu.memory_free_bytes + sum(m.vram_bytes for m in d.unload)
    for p in gpu.processes:
        if p.owner in s["gone"]:
            free += (p.used_bytes or 0) - min(s["residual"].get(p.owner, 0), p.used_bytes or 0)
    for inst in d.plan.instances:
        if inst.provider not in s["starting"]:
            assert inst.pinned and inst.fraction == s["running"][inst.provider]
            continue
        free -= inst.context_bytes
        assert math.ceil(gpu.memory_total_bytes * inst.fraction) <= free, inst.provider
        free -= math.ceil(gpu.memory_total_bytes * inst.fraction)


@settings(max_examples=150, deadline=None)
@given(scene())
def test_a_refusal_exactly_when_no_feasible_plan_and_never_a_plan_vllm_would_refuse(s: dict) -> None:  # type: ignore[type-arg]
    d = _decide(s)
    assert (d.refusal is None) == (d.plan is not None) == d.ok
    assert d.considered is not None
    if d.plan is not None:
        assert d.plan.feasible and d.considered is d.plan
        _vllm_start_checks(s, d)
        assert {i.provider for i in d.plan.instances} == {
            r.provider for r in s["requests"] if r.provider not in s["gone"]}
    else:
        assert not d.considered.feasible and d.unload == ()  # a refusal touches nothing
        assert d.refusal is not None and "\n" not in d.refusal.message
        for fix in d.refusal.fixes:
            assert fix in d.refusal.message or any(fix in p.fixes for p in d.considered.problems)


@settings(max_examples=150, deadline=None)
@given(scene())
def test_only_the_models_the_policy_allows_are_unloaded(s: dict) -> None:  # type: ignore[type-arg]
    d = _decide(s)
    loaded = set(s["ollama"])
    assert set(d.unload) <= loaded
    policy = s["room"].eviction
    if policy == "never":
        assert d.unload == ()
    elif policy == "unload_all" and d.ok:
        assert set(d.unload) == loaded
    elif d.unload:  # unload_idle: only when nothing fits without, and no more than it takes
        never = Room(s["room"].reserve_bytes, s["room"].ollama_reservation_bytes, "never")
        assert not _decide(s, room=never).ok


@settings(max_examples=100, deadline=None)
@given(scene(), st.sampled_from(["no_kv_cache", "kv_too_small", "cuda_oom",
                                 "free_memory_at_start", None]),
       st.integers(5, 95))
def test_after_an_out_of_memory_exit_only_a_slice_the_table_allows(
    s: dict, kind: str | None, failed_h: int  # type: ignore[type-arg]
) -> None:
    s = {**s, "starting": s["starting"][:1]}
    s["requests"] = [r for r in s["requests"] if not r.provider.startswith("s")
                     or r.provider == s["starting"][0]]
    d = _decide(s, after_oom=AfterOom(failed_h / 100, kind))
    if d.plan is not None:
        assert allows(kind, failed_h / 100, d.plan.instance(s["starting"][0]).fraction)
    else:
        assert d.refusal is not None and "out of memory with --gpu-memory-utilization" in d.refusal.message


@settings(max_examples=100, deadline=None)
@given(scene())
def test_a_wake_is_refused_exactly_when_its_slice_would_not_be_free(s: dict) -> None:  # type: ignore[type-arg]
    if not s["running"]:
        return
    sleeper = next(iter(s["running"]))
    gone = s["gone"] - {sleeper}
    d = decide(s["gpu"], [], [sleeper], room=s["room"], running_fractions=s["running"],
               gone=gone, residual=s["residual"], wake=True)
    gpu = s["gpu"]
    free = gpu.memory_free_bytes - s["room"].reserve_bytes
    for p in gpu.processes:
        if p.owner in gone:
            free += (p.used_bytes or 0) - min(s["residual"].get(p.owner, 0), p.used_bytes or 0)
    needed = int(s["running"][sleeper] * gpu.memory_total_bytes)
    assert d.ok is (free >= needed)
    assert d.plan is None and d.unload == ()


# -- each caller's case, on a 16 GiB card --------------------------------------------------

TOTAL = 16 * GIB
OLD = _request("old", 3000, 4096)
NEW = _request("new", 9000, 8192)
SMALL = _request("small", 1200, 4096)


def _with_old(fraction: float = 0.84) -> tuple[GpuInfo, dict[str, float]]:
    return _card(TOTAL, [GpuProcess(1, 300 * MIB), GpuProcess(7, _held(OLD, fraction, TOTAL),
                                                                owner="old")]), {"old": fraction}


def test_start_beside_a_running_engine_keeps_its_slice_or_is_refused_naming_it() -> None:
    gpu, running = _with_old()
    d = decide(gpu, [OLD, SMALL], ["small"], room=Room(), running_fractions=running)
    assert not d.ok and d.refusal is not None
    assert d.refusal.message.startswith("small does not fit: short by")
    small_old, running_small = _with_old(0.3)
    ok = decide(small_old, [OLD, SMALL], ["small"], running_fractions=running_small)
    assert ok.plan is not None and ok.plan.instance("old").fraction == 0.3
    assert ok.plan.instance("old").pinned and not ok.plan.instance("small").pinned


def test_swap_fits_once_the_old_one_stops_and_says_so_when_it_does_not() -> None:
    gpu, running = _with_old()
    beside = decide(gpu, [OLD, NEW], ["new"], running_fractions=running)
    assert not beside.ok  # break-before-make
    after = decide(gpu, [OLD, NEW], ["new"], running_fractions=running, gone=frozenset({"old"}))
    assert after.plan is not None and [i.provider for i in after.plan.instances] == ["new"]
    huge = _request("new", 15000, 8192)
    refused = decide(gpu, [OLD, huge], ["new"], running_fractions=running,
                     gone=frozenset({"old"}), residual={"old": 500 * MIB})
    assert refused.refusal is not None
    assert refused.refusal.message.startswith("new does not fit even once old sleeps: ")


def test_make_before_break_when_the_new_one_fits_beside() -> None:
    gpu, running = _with_old(0.3)
    beside = decide(gpu, [OLD, SMALL], ["small"], running_fractions=running)
    assert beside.ok


def test_a_wake_needs_the_sleepers_whole_slice_back() -> None:
    gpu, running = _with_old(0.5)
    sleeper = GpuProcess(8, 400 * MIB, owner="sleeper")
    card = _card(TOTAL, [*gpu.processes, sleeper])
    fractions = {**running, "sleeper": 0.6}
    refused = decide(card, [], ["sleeper"], running_fractions=fractions, wake=True)
    assert refused.refusal is not None
    assert refused.refusal.message.startswith("sleeper cannot wake: it needs 9830 MiB more")
    once = decide(card, [], ["sleeper"], running_fractions=fractions, wake=True,
                  gone=frozenset({"old"}), residual={"old": 400 * MIB})
    assert once.ok and once.plan is None


def test_a_restart_is_decided_as_its_new_engine_will_be_planned_once_the_old_one_is_gone() -> None:
    """Seed 1 of the soak: ``restart`` of a sleeper was checked with the sleeper in ``gone``,
    which also took it out of the plan (the check said "fits" for a plan without it); the new
    engine's planner, once the sleeper had stopped, refused. A backend both leaving and starting
    is planned afresh on the card without its memory: the same decision its planner makes."""
    sleeper = GpuProcess(9, 2000 * MIB, owner="new")  # what a sleeper still holds
    awake = _card(TOTAL, [GpuProcess(1, 300 * MIB), GpuProcess(7, _held(OLD, 0.5, TOTAL), owner="old")])
    card = _card(TOTAL, [*awake.processes, sleeper])
    running = {"old": 0.5, "new": 0.84}
    check = decide(card, [OLD, NEW], ["new"], running_fractions=running, gone=frozenset({"new"}))
    planner = decide(awake, [OLD, NEW], ["new"], running_fractions={"old": 0.5})
    assert check.ok is planner.ok is False  # the 8192-token 14 GiB model cannot sit beside old
    assert check.refusal is not None and planner.refusal is not None
    assert check.refusal.message.startswith("new would not fit once restarted: ")
    assert check.refusal.message.endswith(planner.refusal.message)
    small = decide(card, [OLD, SMALL], ["small"], running_fractions={"old": 0.5, "small": 0.2},
                   gone=frozenset({"small"}))
    assert small.plan is not None and {i.provider for i in small.plan.instances} == {"old", "small"}


def test_a_wake_unloads_ollama_models_for_its_slice_as_a_start_does_unless_eviction_is_never(
) -> None:
    models = (OllamaModel("big", 4000 * MIB), OllamaModel("small", 2000 * MIB),
              OllamaModel("kept", 1000 * MIB, pinned=True))
    card = _card(TOTAL, [GpuProcess(1, 300 * MIB), GpuProcess(8, 400 * MIB, owner="sleeper"),
                         GpuProcess(9, 7000 * MIB, owner=OWNER_OLLAMA)])
    fractions = {"sleeper": 0.6}  # needs 9830 MiB; 8684 MiB free: short by 1146 MiB

    def wake(eviction: str, loaded: tuple[OllamaModel, ...] = models) -> Decision:
        return decide(card, [], ["sleeper"], running_fractions=fractions, wake=True,
                      room=Room(eviction=eviction), ollama=loaded)  # type: ignore[arg-type]

    assert wake("unload_idle").ok and wake("unload_idle").unload == (models[1],)  # the smallest
    assert wake("unload_all").ok and wake("unload_all").unload == (models[1], models[0])
    never = wake("never")
    assert never.refusal is not None and never.unload == ()
    assert never.refusal.message.startswith("sleeper cannot wake: it needs 9830 MiB more")
    pinned_only = wake("unload_all", (OllamaModel("kept", 7000 * MIB, pinned=True),))
    assert pinned_only.refusal is not None and pinned_only.unload == ()  # a pin is never unloaded


def test_a_restart_after_an_oom_moves_its_slice_the_way_the_table_says_or_is_refused() -> None:
    card = _card(TOTAL, [GpuProcess(1, 300 * MIB)])
    first = decide(card, [NEW], ["new"])
    assert first.plan is not None
    f = first.plan.instance("new").fraction
    larger = decide(card, [NEW], ["new"], after_oom=AfterOom(0.6, "no_kv_cache"))
    assert larger.plan is not None and larger.plan.instance("new").fraction > 0.6
    none = decide(card, [NEW], ["new"], after_oom=AfterOom(f, "kv_too_small"))
    assert none.refusal is not None and "no larger slice fits" in none.refusal.message
    same = decide(card, [NEW], ["new"], after_oom=AfterOom(f, "cuda_oom"))
    assert same.refusal is not None and "no smaller slice fits" in same.refusal.message
    smaller = decide(card, [NEW], ["new"], after_oom=AfterOom(0.97, "free_memory_at_start"))
    assert smaller.plan is not None and smaller.plan.instance("new").fraction == f < 0.97


@pytest.mark.parametrize("policy", POLICIES)
def test_ollama_models_go_only_as_the_policy_says(policy: str) -> None:
    models = (OllamaModel("big", 6 * GIB), OllamaModel("tiny", 500 * MIB))
    card = _card(TOTAL, [GpuProcess(1, 300 * MIB),
                         GpuProcess(2, sum(m.vram_bytes for m in models), owner=OWNER_OLLAMA)])
    d = decide(card, [NEW], ["new"], ollama=models, room=Room(eviction=policy))  # type: ignore[arg-type]
    if policy == "never":
        assert d.refusal is not None and "unload Ollama model big" in d.refusal.message
    elif policy == "unload_idle":
        assert d.ok and [m.name for m in d.unload] == ["big"]
    else:
        assert d.ok and [m.name for m in d.unload] == ["big", "tiny"]


def test_gpumgr_plans_set_is_one_decision_for_every_provider_of_the_card() -> None:
    card = _card(TOTAL, [GpuProcess(1, 300 * MIB)])
    d = decide(card, [OLD, SMALL], ["old", "small"])
    assert d.plan is not None
    assert {i.provider for i in d.plan.instances} == {"old", "small"}
    assert not any(i.pinned for i in d.plan.instances)
