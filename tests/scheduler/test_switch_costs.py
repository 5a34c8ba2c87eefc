"""Switch-cost-aware planning (the ``finish_first`` policy): payoff (with batched engines),
minimum residency, anticipation of a stage, placement, the stage horizon, reclaim between rollouts
(a costly weight sync, batched engines), the starvation rule that overrides them, and the
estimates they read. ``gap_ratio`` ignores costs."""

from __future__ import annotations

import pytest

from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ACTOR_TRAIN,
    ClusterSpec,
    InvalidRequestError,
    PipelineLimits,
    Priority,
    SwitchCosts,
)
from rlix_plugin.scheduler.estimates import Estimates
from rlix_plugin.scheduler.plan import BATCHED_BETWEEN_ROLLOUTS, IDLE, SYNC_COSTS_MORE, Move, Plan
from rlix_plugin.scheduler.planner import ANTICIPATION_S, RESIDENCY_FACTOR, plan_cycle
from rlix_plugin.scheduler.policy import FINISH_FIRST, GAP_RATIO
from rlix_plugin.scheduler.state import SchedulerState
from rlix_plugin.scheduler.topology import PoolTopology
from rlix_plugin.scheduler.trigger import next_deadline, wants_cycle

from .support import FakeClock, end_all, settle
from .support import progress as report

GEN, TRAIN = Priority.GENERATION, Priority.ACTOR_TRAINING
COSTS = SwitchCosts(wake_seconds=5.0, sleep_seconds=3.0)


def pool(gpus=4, costs=COSTS, limits=None, **trains):
    """Pipelines a and b generate on every GPU (TP 1); ``trains`` gives their training GPUs,
    ``limits`` what both declare."""
    clock = FakeClock()
    state = SchedulerState(PoolTopology(gpus, gpus), clock)
    for pid in ("a", "b"):
        clusters = {ACTOR_INFER: ClusterSpec(1, tuple(range(gpus)))}
        if pid in trains:
            clusters[ACTOR_TRAIN] = ClusterSpec(len(trains[pid]), tuple(trains[pid]))
        state.register(pid, clusters, costs, limits)
        state.admit(pid)
    return state, clock


def hold(state, pid, ranks, step_target=64):
    state.request(pid, ACTOR_INFER, GEN, step_target)
    settle(state, Plan([Move(IDLE, wakes={pid: set(ranks)})]))


def progress(state, pid, remaining, step_target=64):
    """Set ``pid``'s remaining samples (as a begin, so that no throughput is measured)."""
    state.demand.open(pid, step_target)
    state.apply_progress(report(pid, step_target, step_target - remaining, begin=True))


def measure_sample_time(state, clock, pid, seconds_per_sample):
    """Feed progress so that the estimate of ``pid``'s engine-seconds per sample is as given."""
    alloc = state.generation[pid]
    engines = len(alloc.active)
    state.apply_progress(report(pid, 64, 0, begin=True))
    clock.now += seconds_per_sample * 4 / engines
    state.apply_progress(report(pid, 64, 4))
    assert state.estimates.sample_s(pid) == pytest.approx(seconds_per_sample)


def donations(plan):
    return {
        (pid, rank)
        for m in plan.moves
        if m.reason.startswith("donated")
        for pid, ranks in m.sleeps.items()
        for rank in ranks
    }


def test_a_bundle_moves_only_when_the_move_pays():
    # Worked example of the planner's docstring: 2.0 engine-seconds per sample, the donor sleeps
    # in 3 s, the receiver wakes in 5 s.
    state, clock = pool()
    hold(state, "a", [0, 1, 2, 3])
    hold(state, "b", [])
    clock.now = 100.0  # long past any residency
    state.generation["a"].active.discard(3)  # b holds rank 3 (of its own mapping)
    state.owner.set((3,), ("b", 3))
    state.generation["b"].active.add(3)
    state.generation["b"].awake_since[3] = 0.0
    measure_sample_time(state, clock, "b", 2.0)
    progress(state, "a", 2)  # a is in its tail: 2 samples on 3 bundles, 1 to spare
    progress(state, "b", 40)  # (40 - 1) / 2 x 2.0 = 39 s of work > 1.5 x 8 s
    assert donations(plan_cycle(state, FINISH_FIRST)) == {("a", 2)}
    progress(state, "b", 9)  # (9 - 1) / 2 x 2.0 = 8 s of work < 1.5 x 8 s: not worth it
    assert donations(plan_cycle(state, FINISH_FIRST)) == set()
    assert donations(plan_cycle(state, GAP_RATIO)), "gap_ratio moves whatever a switch costs"


def test_a_woken_bundle_stays_for_its_minimum_residency():
    state, clock = pool()
    hold(state, "a", [0, 1, 2, 3])
    hold(state, "b", [])
    state.estimates.observe_resize("a", True, 5.0, 1, 1)
    state.estimates.observe_resize("a", False, 3.0, 1, 1)
    state.generation["a"].active.discard(3)
    state.owner.set((3,), ("b", 3))
    state.generation["b"].active.add(3)
    state.generation["b"].awake_since[3] = clock.now
    progress(state, "a", 64)
    progress(state, "b", 1)
    residency = RESIDENCY_FACTOR * 8.0
    clock.now = residency - 1
    # a has more work, but b's engines woke too recently and b has demand for them.
    assert not any(pid == "b" for pid, _ in donations(plan_cycle(state, FINISH_FIRST)))
    assert next_deadline(state, FINISH_FIRST, clock.now) == pytest.approx(residency)


def test_starvation_overrides_residency_and_payoff():
    state, clock = pool()
    hold(state, "a", [0, 1, 2, 3])
    for rank in range(4):
        state.generation["a"].awake_since[rank] = clock.now  # all just woken
    state.estimates.observe_resize("a", True, 5.0, 1, 1)
    progress(state, "a", 64)
    state.request("b", ACTOR_INFER, GEN, 64)
    plan, satisfied = settle(state, policy="finish_first")
    assert len(state.generation["b"].active) == 1 and [r.cluster_id for r in satisfied] == ["b_actor_infer"]


def test_the_gpus_of_a_stage_that_follows_a_rollout_are_kept_for_it():
    state, clock = pool(a=(0, 1))
    hold(state, "a", [0, 1])
    hold(state, "b", [2])
    progress(state, "b", 60)
    end_all(state, "a")
    state.demand.retire("a", clock.now)  # a's rollout ended: its training on 0-1 is due
    settle(state, policy="finish_first")
    assert state.generation["a"].active == {0, 1}, "a's idle engines stay where its stage will sleep them"
    assert state.generation["b"].active == {2, 3}, "b takes what is not kept"
    clock.now += ANTICIPATION_S + 0.01
    settle(state, policy="finish_first")
    assert state.generation["b"].active == {0, 1, 2, 3}, "once the stage is overdue, b gets them"


def test_kept_gpus_are_not_kept_when_switching_costs_nothing():
    state, clock = pool(costs=SwitchCosts(), a=(0, 1))
    hold(state, "a", [0, 1])
    hold(state, "b", [2])
    progress(state, "b", 60)
    end_all(state, "a")
    state.demand.retire("a", clock.now)
    settle(state, policy="finish_first")
    assert state.generation["b"].active == {0, 1, 2, 3}


def test_a_receiver_wakes_on_its_own_stage_gpus_first():
    state, clock = pool(a=(0, 1), b=(2, 3))
    state.request("a", ACTOR_INFER, GEN, 64)
    state.request("b", ACTOR_INFER, GEN, 64)
    settle(state, policy="finish_first")
    assert state.generation["a"].active == {0, 1} and state.generation["b"].active == {2, 3}
    state2, _ = pool(a=(0, 1), b=(2, 3))
    state2.request("a", ACTOR_INFER, GEN, 64)
    state2.request("b", ACTOR_INFER, GEN, 64)
    settle(state2, policy="gap_ratio")
    assert state2.generation["a"].active != {0, 1}, "gap_ratio places by rank order"


def test_no_engine_is_woken_where_a_stage_is_expected_before_it_could_serve():
    state, clock = pool(a=(0, 1))
    hold(state, "a", [0, 1])
    measure_sample_time(state, clock, "a", 0.5)
    hold(state, "b", [3])
    measure_sample_time(state, clock, "b", 2.0)
    progress(state, "a", 1)  # a's rollout ends in about 0.25 s; its training takes 0-1
    progress(state, "b", 60)
    plan = plan_cycle(state, FINISH_FIRST)
    woken = plan.expands.get("b", set())
    assert 2 in woken and not woken & {0, 1}, plan


def test_engines_that_would_need_a_costly_weight_sync_sleep_at_rollout_end():
    state, clock = pool(costs=SwitchCosts(wake_seconds=0.1, sleep_seconds=0.1, sync_seconds=2.0), a=(0, 1))
    hold(state, "a", [0, 1, 2, 3])
    progress(state, "a", 0)
    assert plan_cycle(state, FINISH_FIRST).is_empty(), "every sample counted, the rollout not over: a refill may come"
    end_all(state, "a")
    state.demand.retire("a", clock.now)
    plan = plan_cycle(state, FINISH_FIRST)
    assert [m.reason for m in plan.moves] == [SYNC_COSTS_MORE] and plan.shrinks == {"a": {0, 1, 2, 3}}
    assert plan_cycle(state, GAP_RATIO).is_empty()


@pytest.mark.parametrize("samples_per_engine, woken", [(1, {0, 1, 2}), (8, set())])
def test_batched_engines_count_their_running_samples_as_not_queued(samples_per_engine, woken):
    # b has 8 samples left on one engine, at 8 engine-seconds per sample. One sample per engine:
    # 7 are queued, and each idle bundle pays for its 5 s wake (7 / 2 x 8 s = 28 s, then 16 s,
    # then 10 s > 1.5 x 5 s). Eight per engine: all 8 run already; a woken engine would idle.
    state, clock = pool(limits=PipelineLimits(samples_per_engine=samples_per_engine))
    hold(state, "b", [3])
    measure_sample_time(state, clock, "b", 8.0)
    progress(state, "b", 8)
    plan = plan_cycle(state, FINISH_FIRST)
    assert plan.expands.get("b", set()) == woken, plan


def test_a_batched_pipeline_gets_its_share_in_one_pass_before_its_rollout_begins():
    # No progress stream yet: none of its samples runs, so each bundle it is getting counts for
    # one sample, not for a batch, and the one pass before its first grant wakes all of them.
    state, clock = pool(limits=PipelineLimits(samples_per_engine=64))
    hold(state, "b", [3])
    measure_sample_time(state, clock, "b", 8.0)
    end_all(state, "b")
    state.demand.retire("b", clock.now)
    state.open_rollout("b", 1)
    state.request("b", ACTOR_INFER, GEN, 64)
    assert state.remaining("b") == 64 and not state.demand.progress.get("b")
    plan = plan_cycle(state, FINISH_FIRST)
    assert plan.expands.get("b") == {0, 1, 2}, plan


def test_batched_engines_sleep_between_rollouts():
    state, clock = pool(limits=PipelineLimits(samples_per_engine=16), a=(0, 1))
    hold(state, "a", [2, 3])
    progress(state, "a", 0)
    assert plan_cycle(state, FINISH_FIRST).is_empty(), "every sample counted, the rollout not over: a refill may come"
    end_all(state, "a")
    state.demand.retire("a", clock.now)
    plan = plan_cycle(state, FINISH_FIRST)
    assert [m.reason for m in plan.moves] == [BATCHED_BETWEEN_ROLLOUTS] and plan.shrinks == {"a": {2, 3}}
    one_each, _ = pool(a=(0, 1))
    hold(one_each, "a", [2, 3])
    end_all(one_each, "a")
    one_each.demand.retire("a", 0.0)
    assert plan_cycle(one_each, FINISH_FIRST).is_empty(), "one sample per engine: kept awake for the next rollout"


def test_progress_triggers_a_pass_only_when_a_pipeline_holds_more_than_it_can_use():
    state, _ = pool()
    hold(state, "a", [0, 1, 2, 3])
    progress(state, "a", 10)
    assert not wants_cycle(state, FINISH_FIRST, "progress", "a")
    progress(state, "a", 3)
    assert not wants_cycle(state, FINISH_FIRST, "progress", "a"), "one to give, but nobody else has demand"
    state.request("b", ACTOR_INFER, GEN, 64)
    assert wants_cycle(state, FINISH_FIRST, "progress", "a"), "4 bundles, 3 samples left: one for b, which has none"
    assert wants_cycle(state, FINISH_FIRST, "request", "a")


def test_a_surplus_triggers_a_pass_only_when_another_pipeline_could_take_a_bundle():
    state, _ = pool(gpus=8, limits=PipelineLimits(samples_per_engine=4))
    hold(state, "a", [0, 1, 2, 3])
    hold(state, "b", [4, 5])
    progress(state, "b", 12)  # 8 of them run on its two engines, 4 are queued
    progress(state, "a", 2)
    assert wants_cycle(state, FINISH_FIRST, "progress", "a"), "b has samples queued: a bundle of a pays"
    progress(state, "b", 8)
    assert not wants_cycle(state, FINISH_FIRST, "progress", "a"), "b's samples all run: a pass would move nothing"
    free, _ = pool(gpus=8, costs=SwitchCosts(), limits=PipelineLimits(samples_per_engine=4))
    hold(free, "a", [0, 1, 2, 3])
    hold(free, "b", [4, 5])
    progress(free, "b", 8)
    progress(free, "a", 2)
    assert wants_cycle(free, FINISH_FIRST, "progress", "a"), "a move that costs nothing needs no queued sample"


def test_progress_of_a_pipeline_with_work_left_and_no_engine_triggers_a_pass():
    # A stage took every engine of "a" and its count went back up: the starvation rule may give
    # it an engine now, not a review interval later.
    state, _ = pool()
    state.request("a", ACTOR_INFER, GEN, 64)
    progress(state, "a", 0)
    assert not state.generation["a"].held
    assert not wants_cycle(state, FINISH_FIRST, "progress", "a"), "nothing left to generate: nothing to wake"
    progress(state, "a", 1)
    assert wants_cycle(state, FINISH_FIRST, "progress", "a")
    assert plan_cycle(state, FINISH_FIRST).activations >= 1, "an idle GPU and work left: a wake is planned"


def test_estimates_use_the_median_of_measured_switches_and_the_declaration_before():
    estimates = Estimates(window=3)
    estimates.register("p", SwitchCosts(wake_seconds=4.0, sleep_seconds=1.0, sync_seconds=0.5))
    assert (estimates.wake_s("p"), estimates.sleep_s("p"), estimates.sync_s("p")) == (4.0, 1.0, 0.5)
    for seconds in (9.0, 1.0, 2.0, 3.0):  # the window keeps the last three
        estimates.observe_resize("p", True, seconds, 2, 4)
    assert estimates.wake_s("p") == 2.0 and estimates.sleep_s("p") == 1.0
    assert estimates.switches("p") == (8, (9 + 1 + 2 + 3) * 2 * 4)
    assert estimates.sample_s("p") is None
    estimates.observe_progress("p", 0.0, 0, 2, new_batch=True)
    estimates.observe_progress("p", 3.0, 6, 2, new_batch=False)
    assert estimates.sample_s("p") == pytest.approx(1.0), "2 engines x 3 s / 6 samples"


def test_bad_switch_costs_are_refused_naming_the_field():
    with pytest.raises(InvalidRequestError, match=r"SwitchCosts.wake_seconds must be a finite number >= 0, got -1"):
        SwitchCosts(wake_seconds=-1)
    with pytest.raises(InvalidRequestError, match="sync_seconds .* got inf"):
        SwitchCosts(sync_seconds=float("inf"))
    state, _ = pool()
    with pytest.raises(InvalidRequestError, match="switch_costs must be a SwitchCosts"):
        state.register("c", {ACTOR_INFER: ClusterSpec(1, (0,))}, {"wake_seconds": 1})
    assert "c" not in state.pipelines


@pytest.mark.parametrize("value", [0, -2, 2.0, True, "8"])
def test_a_bad_samples_per_engine_is_refused_naming_it(value):
    with pytest.raises(
        InvalidRequestError, match=rf"PipelineLimits.samples_per_engine must be an int >= 1, got {value!r}"
    ):
        PipelineLimits(samples_per_engine=value)
