"""Reconciling a restored state with each pipeline's own report: what the engines really did
wins, stages nobody holds or asks for come back, requests nobody waits for are dropped, and
anything that would put two owners on one GPU is a conflict, never a silent move."""

from __future__ import annotations

import json

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN
from rlix_plugin.scheduler.persist import dump_state, load_state
from rlix_plugin.scheduler.planner import plan_cycle
from rlix_plugin.scheduler.rehydrate import (
    RELEASE,
    REQUEST,
    CallInFlight,
    PipelineReport,
    reconcile,
    settle_unanswered,
)
from rlix_plugin.scheduler.state import SchedulerState
from rlix_plugin.scheduler.validation import check_state, validate_plan

from ..scheduler.support import seed_state, settle


def restart(state: SchedulerState) -> SchedulerState:
    record = json.loads(json.dumps(dump_state(state, 100.0)))
    return load_state(record, state.pool, state.clock, 100.0)


def mid_preemption() -> tuple[SchedulerState, dict[str, tuple[int, ...]]]:
    """p1 and p2 both rolling out on the 4 GPUs; p1 asks for its training GPUs [0, 1] and the
    engines there are being put to sleep when the scheduler dies. Returns the state and, per
    pipeline, the ranks being put to sleep."""
    state = seed_state()
    for pid in ("p1", "p2"):
        state.request(pid, ACTOR_INFER, 6, 32)
    settle(state)
    state.request("p1", ACTOR_TRAIN, 1, None)
    plan = plan_cycle(state, "gap_ratio")
    validate_plan(state, plan)
    state.start(plan)
    sleeping = {a.pipeline_id: a.remove for a in state.take_actions()}
    assert sleeping and all(sleeping.values())
    return restart(state), sleeping


def awake_after(state: SchedulerState, pid: str, slept: tuple[int, ...]) -> tuple[int, ...]:
    alloc = state.generation[pid]
    return tuple(sorted(({*alloc.active, *alloc.sleeping}) - set(slept)))


def test_sleeps_that_finished_free_their_gpus_and_the_stage_is_granted_after():
    state, sleeping = mid_preemption()
    train = {"p1": "t1"}
    for pid in ("p1", "p2"):
        calls = (CallInFlight(train[pid], REQUEST, ACTOR_TRAIN, 30.0),) if pid in train else ()
        done = reconcile(
            state,
            pid,
            PipelineReport(awake_after(state, pid, sleeping.get(pid, ())), {}, calls),
            {"p1_actor_train": "t1"},
        )
        assert not done.conflicts
        assert sorted(done.slept) == sorted(sleeping.get(pid, ()))
    check_state(state)
    assert state.idle_gpus() == [0, 1] and "p1_actor_train" in state.pending, "the request waits for its retry"
    # Planning resumes from the reconciled state and grants the stage on the freed GPUs.
    _, satisfied = settle(state)
    assert [r.cluster_id for r in satisfied] == ["p1_actor_train"] and state.fixed["p1_actor_train"].gpus == (0, 1)


def test_sleeps_that_did_not_happen_keep_their_engines_awake():
    state, sleeping = mid_preemption()
    for pid in ("p1", "p2"):
        alloc = state.generation[pid]
        everything = tuple(sorted({*alloc.active, *alloc.sleeping}))
        done = reconcile(state, pid, PipelineReport(everything, {}, ()), {})
        assert not done.slept and not done.conflicts
    check_state(state)
    assert state.idle_gpus() == [] and not state.pending, "nobody waits for the stage any more: dropped"


def test_a_stage_nobody_holds_or_asks_for_is_freed_and_one_held_or_asked_for_is_kept():
    state = seed_state()
    for pid in ("p1", "p2"):
        state.request(pid, ACTOR_TRAIN, 1, None)
    settle(state)
    state = restart(state)
    freed = reconcile(state, "p1", PipelineReport((), {}, ()), {})
    assert freed.freed_stages == ["p1_actor_train"] and state.idle_gpus() == [0, 1]
    kept = reconcile(state, "p2", PipelineReport((), {}, (CallInFlight("r", RELEASE, ACTOR_TRAIN, 10.0),)), {})
    assert not kept.freed_stages and state.fixed["p2_actor_train"].gpus == (2, 3), "its release is retried"
    check_state(state)


def test_a_stage_the_pipeline_holds_and_the_state_lost_is_adopted_when_idle_else_a_conflict():
    state = seed_state()
    adopted = reconcile(state, "p1", PipelineReport((), {ACTOR_TRAIN: 1}, ()), {})
    assert adopted.adopted_stages == ["p1_actor_train"] and state.fixed["p1_actor_train"].gpus == (0, 1)
    state.request("p2", ACTOR_INFER, 6, 8)
    settle(state)  # p2's engines take GPUs 2 and 3
    conflict = reconcile(
        state, "p2", PipelineReport(tuple(sorted(state.generation["p2"].active)), {ACTOR_TRAIN: 1}, ()), {}
    )
    assert conflict.conflicts and "p2_actor_train" in conflict.conflicts[0]
    assert "p2_actor_train" not in state.fixed, "never two owners: the GPUs stay where they are"
    check_state(state)


def test_an_engine_awake_on_gpus_the_state_gave_away_is_a_conflict():
    state = seed_state()
    state.request("p1", ACTOR_TRAIN, 1, None)
    settle(state)
    done = reconcile(state, "p2", PipelineReport((0, 3), {}, ()), {})
    assert len(done.conflicts) == 1 and "DP rank 0" in done.conflicts[0] and "p1_actor_train" in done.conflicts[0]
    assert state.generation["p2"].active == {3}, "the rank on idle GPUs is taken back for it"
    assert state.owner[0] == "p1_actor_train"


def test_requests_nobody_waits_for_are_dropped_and_waited_for_ones_stay():
    state = seed_state()
    state.request("p1", ACTOR_TRAIN, 1, None)
    state.request("p2", ACTOR_INFER, 6, 8)
    state = restart(state)
    keys = {"p1_actor_train": "k1", "p2_actor_infer": "k2"}
    kept = reconcile(state, "p1", PipelineReport((), {}, (CallInFlight("k1", REQUEST, ACTOR_TRAIN, 5.0),)), keys)
    dropped = reconcile(state, "p2", PipelineReport((), {}, (CallInFlight("other", REQUEST, ACTOR_INFER, 5.0),)), keys)
    assert kept.kept_requests == ["p1_actor_train"] and dropped.dropped_requests == ["p2_actor_infer"]
    assert list(state.pending) == ["p1_actor_train"]


def test_a_pipeline_that_never_answers_keeps_every_rank_in_doubt_as_awake():
    state, sleeping = mid_preemption()
    for pid, ranks in sleeping.items():
        assert settle_unanswered(state, pid) == sorted(ranks)
        alloc = state.generation[pid]
        assert set(ranks) <= alloc.active and not alloc.sleeping
        state.fence(pid, "did not reattach")
    check_state(state)
    assert state.idle_gpus() == [], "its GPUs stay its own until it is reclaimed"


def test_a_planned_release_whose_ranks_are_all_asleep_is_over():
    state = seed_state()
    state.request("p1", ACTOR_INFER, 6, 8)
    settle(state)
    assert state.release("p1", ACTOR_INFER)
    plan = plan_cycle(state, "gap_ratio")
    validate_plan(state, plan)
    state.start(plan)
    state = restart(state)
    reconcile(state, "p1", PipelineReport((), {}, (CallInFlight("r", RELEASE, ACTOR_INFER, 5.0),)), {})
    assert "p1" not in state.planned_releases and "p1" not in state.generation
    assert state.idle_gpus() == [0, 1, 2, 3]
    check_state(state)


def test_every_reported_rank_must_exist():
    state = seed_state()
    done = reconcile(state, "p1", PipelineReport((7,), {}, ()), {})
    assert done.conflicts == ["reported awake DP ranks [7] out of range 0..3"]
    assert "p1" not in state.generation


def test_an_unknown_outcome_keeps_the_ranks_the_state_knows():
    state, sleeping = mid_preemption()
    for pid in sleeping:
        held = {*state.generation[pid].active, *state.generation[pid].sleeping}
        done = reconcile(state, pid, PipelineReport(None, {}, ()), {})
        assert not done.slept and state.generation[pid].active == held
    check_state(state)
