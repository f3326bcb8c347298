"""The lifecycle policies in-process, on the simulated card with real simulated engines: each
decision is one command through the reconciler (``Reconciler.policy``), a pin is never swapped
out by a policy, an idle action fires once, the demand policy swaps and then holds to its cap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gpumgr.actions.policy import PolicyRunner
from gpumgr.actions.reconciler import Busy
from gpumgr.backend_state import BackendState as S
from gpumgr.config import Config

from gpumgr.sim.harness import free_port
from test_manager import QWEN, SETTINGS, Box, Rig, box, provider_yaml  # noqa: F401 (box: the fixture)

pytestmark = pytest.mark.slow

QWEN14 = "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"
POLICIES = """
policies:
  check_interval_s: 0.1
  demand:
    min_residency_s: 0
    window_s: 60
    margin: 0.2
    min_requests: 3
    max_swaps_per_hour: 1
"""


def pair(box: Box, small: str = "", large: str = "", *, large_active: bool = False) -> Config:
    """The owner's box: the 7B and the 14B on one port of the 16 GiB card, each with extra keys."""
    (box.config_dir / "gpumgr.yaml").write_text(SETTINGS + POLICIES)
    port = free_port()
    return box.write(
        provider_yaml("small", port, QWEN, max_model_len=4096,
                      status="standby" if large_active else "active") + small,
        provider_yaml("large", port, QWEN14, max_model_len=4096,
                      status="active" if large_active else "standby") + large)


async def started(box: Box, config: Config, name: str) -> tuple[Rig, PolicyRunner]:
    rig = box.manager(config)
    await rig.begin(rig._inventory.read())
    await box.up(name)
    return rig, PolicyRunner(rig.reconciler, rig.operator)


async def ticks(runner: PolicyRunner, until: Callable[[], bool], what: str,
                timeout_s: float = 20) -> None:
    """Run the runner's rounds (as its loop does) until ``until``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not until():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; decisions: {runner.decisions}")
        await runner.tick()
        await asyncio.sleep(0.1)


def count_policy_commands(rig: Rig) -> list[str]:
    """Every command a policy asks the reconciler for (what, and whether it was accepted)."""
    asked: list[str] = []
    policy = rig.reconciler.policy

    def counting(what: str, by: str, run: Callable[[], Awaitable[object]],
                 done: Callable[[BaseException | None], None] | None = None) -> bool:
        ok = policy(what, by, run, done)
        asked.append(f"{what}: {'accepted' if ok else 'declined'}")
        return ok

    rig.reconciler.policy = counting  # type: ignore[method-assign]
    return asked


def test_a_pinned_model_is_never_swapped_out_by_demand_and_an_operator_swap_says_so(box: Box) -> None:
    config = pair(box, small="    pinned: true\n", large="    policy: demand\n")

    async def body() -> None:
        rig, runner = await started(box, config, "small")
        asked = count_policy_commands(rig)
        assert runner.report({"large": 50})["accepted"] == {"large": 50}
        for _ in range(5):
            await runner.tick()
        decision = runner.decisions["large"]
        assert decision.action == "none"
        assert decision.reason == "small is pinned: only an operator swaps it out"
        assert asked == [] and set(rig.keepers) == {"small"}
        assert runner.view("small")["pinned"] is True
        lines: list[str] = []
        outcome = await rig.operator.swap("small", "large", lines.append)
        assert "small is pinned: swapped out because you asked" in lines
        assert outcome.message.endswith("; small is pinned: swapped out because you asked")
        await box.up("large")

    box.run(body)


@pytest.mark.parametrize("idle", ["{after_s: 0.6, action: stop}", "{after_s: 0.6, swap_to: small}"])
def test_the_idle_action_fires_once_through_the_reconciler(box: Box, idle: str) -> None:
    config = pair(box, large=f"    idle: {idle}\n", large_active=True)

    async def body() -> None:
        rig, runner = await started(box, config, "large")
        asked = count_policy_commands(rig)
        await runner.tick()
        left = runner.idle_in_s("large", runner.clock())
        assert left is not None and 0 < left <= 0.6
        assert runner.view("large")["idle_action"] in ("stop", "swap to small")
        await ticks(runner, lambda: "large" not in rig.keepers and rig.reconciler.mutation is None,
                    "the idle action")
        for _ in range(10):  # idle longer still: nothing more is asked for
            await runner.tick()
            await asyncio.sleep(0.1)
        if "swap_to" in idle:
            assert asked == ["swap large → small: accepted"]
            await box.up("small")
            assert set(rig.keepers) == {"small"}
        else:
            assert asked == ["stop large: accepted"]
            assert rig.keepers == {} and "large" not in rig.reconciler.desired.running
        assert box.states.state("large") is S.STOPPED

    box.run(body)


def test_demand_swaps_through_the_reconciler_names_itself_to_an_operator_and_holds_its_cap(
        box: Box) -> None:
    config = pair(box, small="    policy: demand\n", large="    policy: demand\n")

    async def body() -> None:
        rig, runner = await started(box, config, "small")
        await runner.tick()
        assert runner.report({"large": 2})["accepted"] == {"large": 2}
        await runner.tick()
        assert runner.decisions["large"].reason.endswith("3 needed")
        assert runner.report({"large": 3})["ignored"] == {"large": "more than one report a second"}
        await asyncio.sleep(1.0)
        runner.report({"large": 3})
        await runner.tick()
        claim = rig.reconciler.mutation
        assert claim is not None and claim.what == "swap small → large"
        with pytest.raises(Busy, match=r"busy: swap small → large since .* \(the demand policy: "
                                       r"large 5 vs small 0 request"):
            await rig.operator.stop("small")
        await ticks(runner, lambda: runner.decisions["large"].reason == "swap done", "the swap")
        await box.up("large")
        assert set(rig.keepers) == {"large"} and box.states.state("small") is S.STOPPED
        assert runner.report({"large": 1})["ignored"] == {"large": "resident"}
        runner.report({"small": 40})
        await runner.tick()
        declined = runner.decisions["small"]
        assert declined.action == "none"
        assert declined.reason == "1 swap(s) in the last hour: the cap is 1"
        view = runner.view("small")
        assert view["last_decision"] == "declined" and view["swaps_last_hour"] == 1
        assert view["next_swap_at"] > runner.clock() + 3500
        assert set(rig.keepers) == {"large"}

    box.run(body)


def test_idle_sleep_fires_once_per_idle_period_and_again_after_a_wake(box: Box) -> None:
    config = pair(box, large="    swap_mode: sleep\n    idle: {after_s: 0.6, action: sleep}\n",
                  large_active=True)

    async def body() -> None:
        rig, runner = await started(box, config, "large")
        asked = count_policy_commands(rig)
        await ticks(runner, lambda: rig.manager.asleep("large")
                    and rig.reconciler.mutation is None, "asleep")
        for _ in range(10):
            await runner.tick()
            await asyncio.sleep(0.1)
        assert asked == ["sleep large: accepted"]
        assert runner.idle_in_s("large", runner.clock()) is None  # not awake: no timer
        await rig.operator.wake("large")
        await box.up("large")
        await runner.tick()
        left = runner.idle_in_s("large", runner.clock())
        assert left is not None and left > 0.3  # a wake starts a new period
        await ticks(runner, lambda: rig.manager.asleep("large")
                    and rig.reconciler.mutation is None, "asleep again")
        assert asked == ["sleep large: accepted", "sleep large: accepted"]

    box.run(body)


def test_demand_for_a_model_on_its_own_port_sleeps_the_resident_and_the_idle_swap_wakes_it(
        box: Box) -> None:
    # sleep mode, each model on its own port (they do not fit together): the policy resolves the
    # never-started 14B's weights for its fit check, then swaps by sleeping the 7B; the 14B's
    # idle action swaps back by waking the same 7B process
    (box.config_dir / "gpumgr.yaml").write_text(
        SETTINGS + POLICIES.replace("max_swaps_per_hour: 1", "max_swaps_per_hour: 4"))
    sleepy = "    swap_mode: sleep\n    policy: demand\n"
    config = box.write(
        provider_yaml("small", free_port(), QWEN, max_model_len=4096) + sleepy,
        provider_yaml("large", free_port(), QWEN14, max_model_len=4096, status="standby")
        + sleepy + "    idle: {after_s: 0.6, swap_to: small}\n")

    async def body() -> None:
        rig, runner = await started(box, config, "small")
        asked = count_policy_commands(rig)
        small = rig.keepers["small"].child
        assert small is not None and "large" not in rig.manager.weights.snapshots
        assert runner.report({"large": 5})["accepted"] == {"large": 5}
        await runner.tick()
        assert runner.decisions["large"].reason == "reading large's weights before the fit check"

        def said(reason: str) -> bool:
            d = runner.decisions.get("large")
            return d is not None and d.reason == reason

        await ticks(runner, lambda: said("swap done"), "the swap")
        await box.up("large")
        assert rig.manager.asleep("small") and rig.keepers["small"].child is small
        await ticks(runner, lambda: rig.manager.asleep("large") and not rig.manager.asleep("small")
                    and rig.reconciler.mutation is None, "the idle swap back")
        await box.up("small")
        assert rig.keepers["small"].child is small  # woken, not started again
        assert asked == ["swap small → large: accepted", "swap large → small: accepted"]

    box.run(body)


def test_a_failed_demand_swap_is_not_asked_for_again_before_a_window_has_passed(box: Box) -> None:
    # the 14B's weights are not on the hub: the swap fails up front, every check would retry it
    pair(box, small="    policy: demand\n", large="    policy: demand\n")
    registry = (box.config_dir / "providers.yaml").read_text().removeprefix("providers:")
    config = box.write(registry.replace(QWEN14, "Qwen/Nowhere-14B-AWQ"))

    async def body() -> None:
        rig, runner = await started(box, config, "small")
        asked = count_policy_commands(rig)
        runner.report({"large": 10})
        await ticks(runner, lambda: runner.decisions.get("large") is not None
                    and "failed" in runner.decisions["large"].reason, "the failed swap")
        for _ in range(15):
            await runner.tick()
            await asyncio.sleep(0.1)
        assert asked == ["swap small → large: accepted"]
        declined = runner.decisions["large"]
        assert declined.action == "none" and declined.reason.startswith("swap failed: ")
        assert declined.reason.endswith("(asked again 60 s after it)")
        assert declined.next_swap_at is not None and declined.next_swap_at > runner.clock() + 55
        assert set(rig.keepers) == {"small"} and not rig.manager.asleep("small")

    box.run(body)
