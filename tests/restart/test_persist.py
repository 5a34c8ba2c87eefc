"""The persisted record: everything a restart needs survives a JSON round trip, times are carried
across clocks, moves in flight come back as ranks in doubt, and a bad record is refused by name."""

from __future__ import annotations

import json

import pytest

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, PipelineLimits, SwitchCosts
from rlix_plugin.scheduler.persist import FORMAT, IN_DOUBT, StateFormatError, dump_state, load_state
from rlix_plugin.scheduler.planner import plan_cycle
from rlix_plugin.scheduler.state import ResizeOutcome, SchedulerState
from rlix_plugin.scheduler.topology import PoolTopology
from rlix_plugin.scheduler.validation import check_state, validate_plan

from ..scheduler.support import FakeClock, plain, progress, seed_clusters, settle

SAVED_AT = 1_000_000.0


def busy_state(clock: FakeClock) -> SchedulerState:
    """Two pipelines sharing 4 GPUs: both rolling out, p1 with progress, p2 fenced-free, a stage
    request pending, declared limits and switch costs, a measured wake."""
    state = SchedulerState(PoolTopology(4, 4), clock)
    state.register(
        "p1",
        seed_clusters((0, 1)),
        SwitchCosts(0.5, 0.25, 0.1),
        PipelineLimits(max_step_target=64, samples_per_engine=8),
    )
    state.register("p2", seed_clusters((2, 3)))
    for pid in ("p1", "p2"):
        state.admit(pid)
        state.request(pid, ACTOR_INFER, 6, 32)
    settle(state)
    clock.now = 3.0
    state.apply_progress(progress("p1", 32, 12, version=4, begin=True))
    state.estimates.observe_resize("p1", True, 0.75, 2, 1)
    clock.now = 4.0
    state.request("p2", ACTOR_TRAIN, 1, None)
    return state


def round_trip(state: SchedulerState, clock: FakeClock, wall_later: float = 0.0) -> SchedulerState:
    record = json.loads(json.dumps(dump_state(state, SAVED_AT)))
    return load_state(record, state.pool, clock, SAVED_AT + wall_later)


def test_a_state_with_no_move_in_flight_comes_back_exactly():
    clock = FakeClock()
    state = busy_state(clock)
    assert not state.moves
    restored = round_trip(state, clock)
    check_state(restored)
    assert plain(restored) == plain(state)
    # What the planner reads is there: the declared limits, costs and the measured wake.
    assert restored.limits["p1"].max_step_target == 64 and restored.limits["p1"].samples_per_engine == 8
    assert restored.estimates.wake_s("p1") == state.estimates.wake_s("p1") > 0
    assert restored.estimates.sleep_s("p1") == 0.25 and restored.estimates.switches("p1") == state.estimates.switches(
        "p1"
    )
    assert restored.remaining("p1") == 20 and restored.open_demand == {"p1": 32, "p2": 32}
    # And it plans the same next move.
    assert plain(plan_cycle(restored, "gap_ratio")) == plain(plan_cycle(state, "gap_ratio"))


def test_times_are_carried_across_clocks_as_ages():
    clock = FakeClock()
    clock.now = 500.0
    state = SchedulerState(PoolTopology(4, 4), clock)
    state.register("p1", seed_clusters((0, 1)))
    state.admit("p1")
    state.request("p1", ACTOR_TRAIN, 1, None)
    clock.now = 520.0  # the request has waited 20 s when the record is saved
    record = json.loads(json.dumps(dump_state(state, SAVED_AT)))
    other = FakeClock()
    other.now = 7.0  # the restarted scheduler's clock reads something else entirely
    restored = load_state(record, state.pool, other, SAVED_AT + 3.0)  # 3 s later
    assert restored.pending["p1_actor_train"].enqueued_at == pytest.approx(7.0 - 23.0)


def test_moves_in_flight_come_back_in_doubt_and_unmade_reservations_are_freed():
    clock = FakeClock()
    state = busy_state(clock)
    # p2's training needs GPUs 2 and 3: a move puts the engines there to sleep and reserves them.
    plan = plan_cycle(state, "gap_ratio")
    validate_plan(state, plan)
    state.start(plan)
    actions = state.take_actions()
    assert actions and all(a.remove for a in actions)
    sleeping = {(a.pipeline_id, r) for a in actions for r in a.remove}
    restored = round_trip(state, clock)
    assert not restored.moves
    for pid, rank in sleeping:
        assert restored.generation[pid].sleeping.get(rank) == IN_DOUBT
        assert restored.owner[restored.pipelines[pid].bundles[rank][0]] == (pid, rank), "in doubt: it keeps its GPU"
    assert restored.pending["p2_actor_train"].move is None, "the grant the move was for is planned again"
    assert "p2_actor_train" not in set(restored.owner), "no GPU stays reserved for a grant not made"


def test_a_wake_that_was_not_issued_yet_is_dropped_with_its_reservation():
    clock = FakeClock()
    state = SchedulerState(PoolTopology(4, 4), clock)
    for pid, train in (("p1", (0, 1)), ("p2", (2, 3))):
        state.register(pid, seed_clusters(train))
        state.admit(pid)
    state.request("p1", ACTOR_INFER, 6, 32)
    settle(state)  # p1 has every engine
    state.request("p2", ACTOR_INFER, 6, 32)
    plan = plan_cycle(state, "gap_ratio")
    validate_plan(state, plan)
    state.start(plan)  # p1's engines go to sleep first; p2's wakes wait for their GPUs
    waking = {r for r in state.generation["p2"].waking}
    assert waking and not [a for a in state.take_actions() if a.add]
    restored = round_trip(state, clock)
    assert restored.generation["p2"].waking == {}, "a wake never issued cannot have happened"
    assert not [o for o in restored.owner if o is not None and o[0] == "p2"]


def test_a_record_of_another_format_or_pool_or_a_damaged_one_is_refused_by_name():
    clock = FakeClock()
    record = json.loads(json.dumps(dump_state(busy_state(clock), SAVED_AT)))
    with pytest.raises(StateFormatError, match="format 99"):
        load_state({**record, "format": 99}, PoolTopology(4, 4), clock, SAVED_AT)
    with pytest.raises(StateFormatError, match=r"pool of \[4, 4\].*not \[8, 8\]"):
        load_state(record, PoolTopology(8, 8), clock, SAVED_AT)
    damaged = {**record, "owner": record["owner"][:2]}
    with pytest.raises(StateFormatError, match="2 entries for 4 GPUs"):
        load_state(damaged, PoolTopology(4, 4), clock, SAVED_AT)
    unknown = {
        **record,
        "fixed": {
            "ghost_actor_train": {"pipeline_id": "ghost", "cluster": ACTOR_TRAIN, "priority": 1, "gpus": [0], "age": 0}
        },
    }
    with pytest.raises(StateFormatError, match="'ghost'"):
        load_state(unknown, PoolTopology(4, 4), clock, SAVED_AT)
    missing = {k: v for k, v in record.items() if k != "pending"}
    with pytest.raises(StateFormatError, match="damaged: KeyError"):
        load_state(missing, PoolTopology(4, 4), clock, SAVED_AT)
    assert record["format"] == FORMAT


def test_a_resize_outcome_after_loading_finds_no_move_and_changes_nothing():
    clock = FakeClock()
    state = busy_state(clock)
    plan = plan_cycle(state, "gap_ratio")
    validate_plan(state, plan)
    state.start(plan)
    action = state.take_actions()[0]
    restored = round_trip(state, clock)
    before = plain(restored)
    # The dead incarnation's call answering late must not move anything in the new state.
    restored.resized(action, ResizeOutcome(()))
    assert plain(restored) == before


def test_limits_saved_before_samples_per_engine_existed_load_as_one_sample_per_engine():
    clock = FakeClock()
    record = json.loads(json.dumps(dump_state(busy_state(clock), SAVED_AT)))
    assert record["pipelines"]["p1"]["limits"] == [64, 1, None, 8]
    record["pipelines"]["p1"]["limits"] = [64, 1, None]
    restored = load_state(record, PoolTopology(4, 4), clock, SAVED_AT)
    assert restored.limits["p1"] == PipelineLimits(max_step_target=64, samples_per_engine=1)
