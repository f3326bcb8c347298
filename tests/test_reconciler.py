"""The reconciler in-process: every writer of what runs takes its turn, operations write their
intent first, and a daemon killed at any phase of an operation converges on the next boot to the
target or back to the previous state, never to nothing.

The engines, the card and the hub are the simulated ones (real processes); a "daemon crash" is
the in-process equivalent of SIGKILL: the operation's task and every keeper are cancelled where
they stand, nothing is cleaned up, the engines keep running, and a new set of actions boots on
the same state directory.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from gpumgr.actions.reconciler import Busy, OperationFailed
from gpumgr.backend_state import BackendState as S
from gpumgr.errors import PlanInfeasible
from gpumgr.supervisor import events as ev

from gpumgr.sim.harness import alive, free_port
from test_manager import DEEPSEEK, QWEN, SETTINGS, Box, Rig, box, provider_yaml  # noqa: F401 (box: the fixture)

pytestmark = pytest.mark.slow

QWEN14 = "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"


def same_port_pair(box: Box, *, load_s: float = 0.2) -> tuple[int, object]:
    """The owner's box: the 7B and the 14B on one port of the 16 GiB card, 7B active."""
    (box.config_dir / "gpumgr.yaml").write_text(
        SETTINGS.replace("load_seconds: 0.2", f"load_seconds: {load_s}"))
    port = free_port()
    config = box.write(provider_yaml("small", port, QWEN, max_model_len=4096),
                       provider_yaml("large", port, QWEN14, status="standby", max_model_len=4096))
    return port, config


def desired_on_disk(box: Box) -> dict[str, object]:
    return dict(json.loads((box.tmp / "state" / "desired.json").read_text()))


def engines(box: Box) -> dict[int, int]:
    """pid → MiB of every engine holding memory on the simulated card."""
    return {a.pid: a.used_mib for a in box.gpu().read().allocations}


async def wait_event(box: Box, match: Callable[[ev.SupervisorEvent], bool], what: str) -> None:
    await box.until(lambda: any(match(e) for e in box.events), what)


def crash(box: Box, rig: Rig, task: asyncio.Task[object] | None) -> None:
    """The daemon dies here: its operation and keepers stop where they are, engines live on."""
    if task is not None:
        task.cancel()
    box.crash(rig)


SWAP_PHASES: dict[str, Callable[[ev.SupervisorEvent], bool]] = {
    "draining": lambda e: isinstance(e, ev.Draining) and e.backend == "small",
    "released": lambda e: isinstance(e, ev.ChildStopped) and e.backend == "small",
    "loading": lambda e: isinstance(e, ev.ChildStarted) and e.backend == "large",
}


@pytest.mark.parametrize("phase", list(SWAP_PHASES))
def test_a_reload_during_a_swap_waits_for_it_and_is_applied_after(box: Box, phase: str) -> None:
    port, config = same_port_pair(box, load_s=0.5)

    async def body() -> None:
        rig = box.manager(config)  # type: ignore[arg-type]
        await rig.begin(rig._inventory.read())
        await box.up("small")
        order: list[str] = []

        async def swap() -> None:
            await rig.operator.swap("small", "large")
            order.append("swap")

        async def reload() -> None:
            await rig.reconcile(box.write(
                provider_yaml("small", port, QWEN, max_model_len=4096, status="standby"),
                provider_yaml("large", port, QWEN14, status="standby", max_model_len=4096,
                              description="edited during the swap")))
            order.append("reload")

        swapping = asyncio.create_task(swap())
        await wait_event(box, SWAP_PHASES[phase], phase)
        await asyncio.gather(swapping, reload())
        assert order == ["swap", "reload"]  # queued behind the swap, not interleaved
        await box.up("large")
        assert box.states.state("small") is S.STOPPED
        assert set(rig.keepers) == {"large"}  # a description edit restarts nothing
        assert len(engines(box)) == 1
        assert sum(isinstance(e, ev.ChildStarted) and e.backend == "large" for e in box.events) == 1
        stored = desired_on_disk(box)
        assert set(stored["backends"]) == {"large"} and "intent" not in stored  # type: ignore[arg-type]

    box.run(body)


@pytest.mark.parametrize("operation", ["start", "restart"])
def test_a_reload_during_a_start_or_restart_is_applied_after_it(box: Box, operation: str) -> None:
    (box.config_dir / "gpumgr.yaml").write_text(SETTINGS.replace("load_seconds: 0.2", "load_seconds: 1"))
    a, b = free_port(), free_port()
    config = box.write(provider_yaml("small", a, QWEN),
                       provider_yaml("other", b, DEEPSEEK, status="standby"))

    async def body() -> None:
        rig = box.manager(config)
        await rig.begin(rig._inventory.read())
        await box.up("small")
        name = "other" if operation == "start" else "small"
        work = asyncio.create_task(getattr(rig.operator, operation)(name))
        await wait_event(box, lambda e: isinstance(e, ev.ChildStarted) and e.backend == name
                         and not e.adopted and sum(isinstance(x, ev.ChildStarted) for x in box.events) > 1,
                         f"{name} loading")
        changed = box.write(provider_yaml("small", a, QWEN, description="edited"),
                            provider_yaml("other", b, DEEPSEEK, status="standby", description="x"))
        reloading = asyncio.create_task(rig.reconcile(changed))
        await asyncio.sleep(0.2)
        assert not reloading.done()  # waiting for its turn
        await work
        report = await reloading
        assert name in report.unchanged
        await box.up(name)
        stored = desired_on_disk(box)
        assert name in stored["backends"] and "intent" not in stored  # type: ignore[operator]

    box.run(body)


def test_a_start_asked_for_during_boot_adoption_is_refused_busy_at_once(box: Box) -> None:
    _, config = same_port_pair(box)

    async def body() -> None:
        rig = box.manager(config)  # type: ignore[arg-type]
        booting = asyncio.create_task(rig.begin(rig._inventory.read()))
        await asyncio.sleep(0)  # the boot has its turn
        with pytest.raises(Busy, match="boot adoption"):
            rig.operator.check_idle()
        await booting
        rig.operator.check_idle()  # free again once adoption is done
        await box.up("small")

    box.run(body)


def test_a_swap_that_cannot_fit_on_first_use_ends_stopped_not_downloading(box: Box) -> None:
    (box.config_dir / "gpumgr.yaml").write_text(SETTINGS + "  gpus:\n    - memory_total_mib: 8192\n")
    a, b = free_port(), free_port()
    config = box.write(provider_yaml("small", a, QWEN, max_model_len=2048),
                       provider_yaml("large", b, QWEN14, status="standby", max_model_len=32768))

    async def body() -> None:
        rig = box.manager(config)
        await rig.begin(rig._inventory.read())
        await box.up("small")
        pid = box.pid(rig, "small")
        with pytest.raises(PlanInfeasible, match="does not fit even once small"):
            await rig.operator.swap("small", "large")
        assert box.states.state("large") is S.STOPPED  # its weights check said downloading
        assert box.pid(rig, "small") == pid  # nothing stopped
        assert "large" not in desired_on_disk(box)["backends"]  # type: ignore[operator]

    box.run(body)


def test_a_start_that_cannot_fit_is_refused_up_front_with_nothing_written(box: Box) -> None:
    (box.config_dir / "gpumgr.yaml").write_text(SETTINGS + "  gpus:\n    - memory_total_mib: 8192\n")
    config = box.write(provider_yaml("small", free_port(), QWEN, max_model_len=2048),
                       provider_yaml("large", free_port(), QWEN14, status="standby",
                                     max_model_len=32768))

    async def body() -> None:
        rig = box.manager(config)
        await rig.begin(rig._inventory.read())
        await box.up("small")
        before = desired_on_disk(box)
        with pytest.raises(PlanInfeasible):
            await rig.operator.start("large")
        assert desired_on_disk(box) == before
        assert not any(isinstance(e, ev.ChildStarted) and e.backend == "large" for e in box.events)
        assert box.states.state("large") is S.STOPPED

    box.run(body)


def test_a_swap_between_models_on_two_cards_takes_both_leases(box: Box) -> None:
    (box.config_dir / "gpumgr.yaml").write_text(
        SETTINGS + "  gpus:\n    - memory_total_mib: 16384\n    - memory_total_mib: 16384\n")
    a, b = free_port(), free_port()
    config = box.write(provider_yaml("small", a, QWEN),
                       provider_yaml("other", b, DEEPSEEK, status="standby").replace(
                           "    max_num_seqs: 2\n", "    max_num_seqs: 2\n    gpu: 1\n"))

    async def body() -> None:
        rig = box.manager(config)
        await rig.begin(rig._inventory.read())
        await box.up("small")
        outcome = await rig.operator.swap("small", "other")
        assert "swapped" in outcome.message
        await box.up("other")
        assert box.states.state("small") is S.STOPPED
        assert set(desired_on_disk(box)["backends"]) == {"other"}  # type: ignore[arg-type]

    box.run(body)


def test_a_failed_restart_hands_the_backend_back_to_its_keeper(box: Box) -> None:
    _, config = same_port_pair(box)

    async def body() -> None:
        rig = box.manager(config)  # type: ignore[arg-type]
        await rig.begin(rig._inventory.read())
        await box.up("small")
        with pytest.raises(OperationFailed, match="did not become healthy"):
            await rig.operator.restart("small", timeout_s=0.05)
        assert "small" in desired_on_disk(box)["backends"]  # type: ignore[operator]
        await box.up("small")  # the keeper's restart policy brought it up again
        assert "small" in rig.keepers

    box.run(body)


# -- a daemon killed at each phase of an operation ---------------------------------------------


@pytest.mark.parametrize("phase", list(SWAP_PHASES))
def test_a_daemon_killed_during_a_swap_converges_on_the_next_boot(box: Box, phase: str) -> None:
    """Killed while the old model drains (it still serves): the next daemon keeps it. Killed
    once it is gone (memory released, or the new one loading): the next daemon finishes the
    swap. Never nothing serving, exactly one engine on the port, desired.json says what runs.
    (An idle drain is over in milliseconds: whether the old engine was still alive when the
    daemon died decides which way is right; tests/test_swap.py holds a long request in flight
    to pin the "keep the old one" way with a real SIGKILL.)"""
    port, config = same_port_pair(box, load_s=1.5)

    async def body() -> None:
        first = box.manager(config)  # type: ignore[arg-type]
        await first.begin(first._inventory.read())
        await box.up("small")
        old_pid = box.pid(first, "small")
        swapping = asyncio.create_task(first.operator.swap("small", "large"))
        await wait_event(box, SWAP_PHASES[phase], phase)
        intent = desired_on_disk(box).get("intent")
        assert isinstance(intent, dict) and intent["operation"] == "swap small → large"
        crash(box, first, swapping)
        await asyncio.wait({swapping}, timeout=30)  # its cancellation ran (a loaded box is slow)
        await asyncio.sleep(0.1)
        survived = alive(old_pid)  # while draining; past SIGTERM once the drain is over

        second = box.manager(config)  # type: ignore[arg-type]
        await second.begin(second._inventory.read())
        expected = "small" if survived else "large"
        if phase != "draining":
            assert not survived
        await box.up(expected)
        await box.until(lambda: "intent" not in desired_on_disk(box), "the intent settled")
        assert set(desired_on_disk(box)["backends"]) == {expected}  # type: ignore[arg-type]
        assert set(second.keepers) == {expected}
        await box.until(lambda: len(engines(box)) == 1, "one engine on the card")
        if expected == "small":
            assert box.pid(second, "small") == old_pid  # adopted, never stopped
        else:
            assert not alive(old_pid)

    box.run(body)


def test_a_daemon_killed_while_a_sleep_mode_swap_wakes_the_new_engine_ends_with_one_awake(
    box: Box,
) -> None:
    (box.config_dir / "gpumgr.yaml").write_text(SETTINGS)
    a, b = free_port(), free_port()
    sleepy = "    swap_mode: sleep\n"
    config = box.write(
        provider_yaml("small", a, QWEN).replace("    max_num_seqs: 2\n", "    max_num_seqs: 2\n" + sleepy),
        provider_yaml("large", b, DEEPSEEK).replace("    max_num_seqs: 2\n", "    max_num_seqs: 2\n" + sleepy))

    async def body() -> None:
        first = box.manager(config)
        await first.begin(first._inventory.read())
        await box.up("small", "large")
        await first.operator.sleep("large")
        swapping = asyncio.create_task(first.operator.swap("small", "large"))
        await wait_event(box, lambda e: isinstance(e, ev.Sleeping) and e.backend == "small",
                         "small asleep")
        crash(box, first, swapping)

        second = box.manager(config)
        await second.begin(second._inventory.read())
        await box.until(lambda: "intent" not in desired_on_disk(box), "the intent settled")
        stored = desired_on_disk(box)
        awake = [n for n, b in stored["backends"].items() if not b["asleep"]]  # type: ignore[attr-defined]
        assert len(awake) == 1
        await box.up(awake[0])
        assert not second.keepers[awake[0]].asleep

    box.run(body)


@pytest.mark.parametrize("operation", ["start", "restart"])
def test_a_daemon_killed_during_a_start_or_restart_ends_with_the_engine_serving(
    box: Box, operation: str,
) -> None:
    (box.config_dir / "gpumgr.yaml").write_text(SETTINGS.replace("load_seconds: 0.2", "load_seconds: 1"))
    a, b = free_port(), free_port()
    config = box.write(provider_yaml("small", a, QWEN),
                       provider_yaml("other", b, DEEPSEEK, status="standby"))

    async def body() -> None:
        first = box.manager(config)
        await first.begin(first._inventory.read())
        await box.up("small")
        name = "other" if operation == "start" else "small"
        work = asyncio.create_task(getattr(first.operator, operation)(name))
        await wait_event(box, lambda e: isinstance(e, ev.ChildStarted) and e.backend == name
                         and sum(isinstance(x, ev.ChildStarted) for x in box.events) > 1,
                         f"{name} loading")
        loading = next(e.pid for e in reversed(box.events)
                       if isinstance(e, ev.ChildStarted) and e.backend == name)
        crash(box, first, work)
        await asyncio.wait({work}, timeout=30)  # its cancellation ran (a loaded box is slow)
        await asyncio.sleep(0.2)
        survived = alive(loading)  # in-process, the cancelled start may have stopped it

        second = box.manager(config)
        await second.begin(second._inventory.read())
        # A start whose engine survived is finished; else the previous state (without it) is
        # intact and kept. A restart's target is its previous state: it serves either way.
        expected = {"small", name} if survived or operation == "restart" else {"small"}
        await box.up(*expected)
        await box.until(lambda: "intent" not in desired_on_disk(box), "the intent settled")
        assert set(desired_on_disk(box)["backends"]) == expected  # type: ignore[arg-type]
        await box.until(lambda: len(engines(box)) == len(expected), "one engine each")

    box.run(body)


# -- what the chaos soak found (seed 1, step 345): a restart of a sleeper ------------------------


def sleeper_beside_a_grown_engine(box: Box) -> object:
    """Deepseek started alone (a large slice), then put to sleep; the 7B started while it
    sleeps (its slice planned around what the sleeper still holds). Deepseek awake beside the
    7B is more than the 16 GiB card holds (the soak's own registry)."""
    sleepy = "    swap_mode: sleep\n"
    return box.write(
        provider_yaml("small", free_port(), QWEN, status="standby", max_model_len=4096).replace(
            "    max_num_seqs: 2\n", "    max_num_seqs: 8\n" + sleepy),
        provider_yaml("deep", free_port(), DEEPSEEK, max_model_len=4096).replace(
            "    max_num_seqs: 2\n", "    max_num_seqs: 4\n" + sleepy))


async def sleeping_deep_and_small_up(box: Box, config: object) -> Rig:
    rig = box.manager(config)  # type: ignore[arg-type]
    await rig.begin(rig._inventory.read())
    await box.up("deep")
    await rig.operator.sleep("deep")
    await rig.operator.start("small")
    await box.up("small")
    assert box.states.state("deep") is S.SLEEPING
    return rig


def test_a_restart_of_a_sleeper_that_cannot_come_back_awake_is_refused_before_it_is_stopped(
    box: Box,
) -> None:
    config = sleeper_beside_a_grown_engine(box)

    async def body() -> None:
        rig = await sleeping_deep_and_small_up(box, config)
        deep, small = box.pid(rig, "deep"), box.pid(rig, "small")
        before = desired_on_disk(box)
        with pytest.raises(PlanInfeasible, match="deep would not fit once restarted: "):
            await rig.operator.restart("deep")
        assert box.pid(rig, "deep") == deep and rig.keepers["deep"].asleep  # never stopped
        assert box.states.state("deep") is S.SLEEPING
        assert box.pid(rig, "small") == small
        assert desired_on_disk(box) == before  # still asleep, and it is

    box.run(body)


def test_a_sleeper_whose_restart_fails_and_cannot_come_back_leaves_desired_state(box: Box) -> None:
    """Past the check (the card changed meanwhile, a crash): the restart stops the sleeper, its
    new engine cannot start and neither can the sleeper it was; desired.json then says what
    runs (not ``asleep`` for an engine that is gone), and the backend is ``stopped``."""
    config = sleeper_beside_a_grown_engine(box)

    async def body() -> None:
        rig = await sleeping_deep_and_small_up(box, config)
        r = rig.reconciler
        deep = box.pid(rig, "deep")
        async with r.turn("restart deep"):  # the operation itself, as the check let it through
            with pytest.raises(OperationFailed, match="did not come back"):
                await r.apply("restart deep", r.target("deep"), ["deep"], restart=["deep"])
        assert not alive(deep) and "deep" not in rig.keepers
        stored = desired_on_disk(box)
        assert set(stored["backends"]) == {"small"} and "intent" not in stored  # type: ignore[arg-type]
        assert box.states.state("deep") is S.STOPPED
        await box.up("small")

    box.run(body)


# -- reloads that promote a standby provider (soak --promotions) ---------------------------------


def test_a_reload_promoting_a_provider_onto_a_port_another_runs_is_refused_with_its_reason(
    box: Box,
) -> None:
    """The owner's file marks the 7B ``active`` while the 14B (swapped in) serves its port: the
    7B's keeper used to wait for the port for good. Now the promotion is refused, with the reason
    as the reload's warning and the backend's detail; the rest of the reload is applied."""
    port, config = same_port_pair(box)

    async def body() -> None:
        rig = box.manager(config)  # type: ignore[arg-type]
        await rig.begin(rig._inventory.read())
        await box.up("small")
        await rig.operator.swap("small", "large")
        await box.up("large")
        large = box.pid(rig, "large")
        demoted = await rig.reconcile(box.write(  # the owner's first edit: the 7B standby…
            provider_yaml("small", port, QWEN, max_model_len=4096, status="standby"),
            provider_yaml("large", port, QWEN14, status="standby", max_model_len=4096)))
        assert demoted.unchanged == ["large"] and not demoted.refused
        report = await rig.reconcile(box.write(  # …then active again, the 14B still serving
            provider_yaml("small", port, QWEN, max_model_len=4096, status="active"),
            provider_yaml("large", port, QWEN14, status="standby", max_model_len=4096,
                          description="edited with the promotion")))
        assert report.started == [] and set(report.refused) == {"small"}
        assert report.refused["small"].startswith(f"port {port} is held by large (running)")
        assert report.warnings() == [f"small not started: {report.refused['small']}"]
        assert set(rig.keepers) == {"large"} and box.pid(rig, "large") == large
        assert box.states.state("small") is S.STOPPED
        assert "not started: port" in box.states.reason("small")
        assert set(desired_on_disk(box)["backends"]) == {"large"}  # type: ignore[arg-type]
        assert len(engines(box)) == 1

    box.run(body)


def test_a_reload_promoting_a_provider_the_card_cannot_hold_beside_the_others_is_refused(
    box: Box,
) -> None:
    config = sleeper_beside_a_grown_engine(box)  # the 7B standby, deep active

    async def body() -> None:
        rig = box.manager(config)  # type: ignore[arg-type]
        await rig.begin(rig._inventory.read())
        await box.up("deep")
        await rig.manager.ensure_weights("small")  # known locally: the set can be planned
        promoted = box.write(*(
            provider_yaml("small", rig.manager.provider("small").port or 0, QWEN,
                          max_model_len=4096).replace(
                "    max_num_seqs: 2\n", "    max_num_seqs: 8\n    swap_mode: sleep\n"),
            provider_yaml("deep", rig.manager.provider("deep").port or 0, DEEPSEEK,
                          max_model_len=4096).replace(
                "    max_num_seqs: 2\n", "    max_num_seqs: 4\n    swap_mode: sleep\n")))
        deep = box.pid(rig, "deep")
        report = await rig.reconcile(promoted)
        assert set(report.refused) == {"small"} and report.started == []
        assert "small does not fit" in report.refused["small"]
        assert set(rig.keepers) == {"deep"} and box.pid(rig, "deep") == deep
        assert box.states.state("small") is S.STOPPED
        assert set(desired_on_disk(box)["backends"]) == {"deep"}  # type: ignore[arg-type]
        assert not any(isinstance(e, ev.ChildStarted) and e.backend == "small" for e in box.events)

    box.run(body)


def test_a_restart_of_an_adopted_engine_is_checked_with_its_weights_looked_up_first(box: Box) -> None:
    """The soak (seed 1 with the restart check): an engine adopted after a daemon crash had no
    snapshot known to the new daemon, and the restart's fit decision raised ``KeyError``."""
    _, config = same_port_pair(box)

    async def body() -> None:
        first = box.manager(config)  # type: ignore[arg-type]
        await first.begin(first._inventory.read())
        await box.up("small")
        old = box.pid(first, "small")
        crash(box, first, None)
        second = box.manager(config)  # type: ignore[arg-type]
        await second.begin(second._inventory.read())
        await box.up("small")
        assert box.pid(second, "small") == old  # adopted
        outcome = await second.operator.restart("small")
        assert outcome.message.startswith("small restarted")
        await box.up("small")
        assert box.pid(second, "small") != old and not alive(old)

    box.run(body)


def test_an_awake_engine_that_cannot_come_back_after_a_failed_swap_is_handed_to_its_keeper(
    box: Box,
) -> None:
    """A swap whose new engine fails, and whose old one cannot come back either (a stranger took
    the card meanwhile): the old one stays desired and gets a keeper again, which says why it
    does not run (never desired with nothing keeping it, published ``stopped``)."""
    _, config = same_port_pair(box)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    async def body() -> None:
        rig = box.manager(config)  # type: ignore[arg-type]
        await rig.begin(rig._inventory.read())
        await box.up("small")
        r = rig.reconciler
        gpu = box.gpu()
        uuid = gpu.read().gpus[0].uuid

        async def card_taken() -> None:  # right after the old engine's memory came back
            gpu.allocate(stranger.pid, uuid, 15000, "stranger")

        async with r.turn("swap small → large"):
            with pytest.raises(OperationFailed, match="did not come back"):
                await r.apply("swap small → large", r.target("large").without("small"),
                              ["small", "large"], between=card_taken)
        stored = desired_on_disk(box)
        assert set(stored["backends"]) == {"small"} and "intent" not in stored  # type: ignore[arg-type]
        assert set(rig.keepers) == {"small"}
        await box.until(lambda: box.states.state("small") is S.FAILED, "small failed, said why")
        assert "does not fit" in box.states.reason("small")
        assert box.states.state("large") is S.STOPPED

    try:
        box.run(body)
    finally:
        stranger.kill()
        stranger.wait()
