"""Scheduler API semantics on the pure state: requests, releases, the open-demand registry,
progress. Bad input raises naming the value and changes nothing."""

from __future__ import annotations

import pytest

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, InvalidRequestError, PipelineGoneError, Priority
from rlix_plugin.scheduler.demand import APPLIED, IGNORED, RETIRED
from rlix_plugin.scheduler.plan import Plan
from rlix_plugin.scheduler.validation import check_state

from .support import end, end_all, plain, progress, seed_clusters, seed_state, settle

GEN = Priority.GENERATION
TRAIN = Priority.ACTOR_TRAINING


def cycle(state):
    return settle(state)


def frozen(state):
    return plain(state)


def test_generation_request_enqueues_writes_registry_then_short_circuits():
    state = seed_state()
    outcome = state.request("p1", ACTOR_INFER, GEN, 64)
    assert not outcome.granted
    assert state.open_demand == {"p1": 64}, "an enqueued GENERATION request writes the registry"
    assert "p1_actor_infer" in state.pending
    _, satisfied = cycle(state)
    assert [r.cluster_id for r in satisfied] == ["p1_actor_infer"]
    end_all(state, "p1")
    state.demand.retire("p1", 0.0)
    outcome = state.request("p1", ACTOR_INFER, GEN, 32)
    assert outcome.granted and outcome.dp_ranks == (0, 1, 2, 3)
    assert state.open_demand == {"p1": 32}, "a short-circuited GENERATION request writes the registry too"


def test_generation_cluster_with_no_awake_worker_enqueues_again():
    state = seed_state()
    state.request("p1", ACTOR_INFER, GEN, 8)
    cycle(state)
    state.plan_release("p1", [0, 1, 2, 3])
    cycle(state)
    assert state.generation["p1"].active == set(), "held but suspended"
    assert not state.request("p1", ACTOR_INFER, GEN, 8).granted


def test_a_stage_is_granted_once_and_asking_again_while_held_changes_nothing():
    state = seed_state()
    state.request("p1", ACTOR_TRAIN, TRAIN, None)
    cycle(state)
    before = frozen(state)
    for priority in (TRAIN, Priority.OLD_LOG_PROBS):
        with pytest.raises(InvalidRequestError, match="'p1_actor_train' is already held .granted at priority 1."):
            state.request("p1", ACTOR_TRAIN, priority, None)
    assert frozen(state) == before
    state.release("p1", ACTOR_TRAIN)
    assert not state.request("p1", ACTOR_TRAIN, Priority.OLD_LOG_PROBS, None).granted, "after a release, again"


def test_duplicate_pending_request_is_an_error_and_changes_nothing():
    state = seed_state()
    state.request("p1", ACTOR_INFER, GEN, 8)
    state.request("p2", ACTOR_TRAIN, TRAIN, None)
    before = frozen(state)
    with pytest.raises(InvalidRequestError, match="'p2_actor_train' is already pending"):
        state.request("p2", ACTOR_TRAIN, TRAIN, None)
    assert frozen(state) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", ACTOR_INFER, 6, 8), "unknown pipeline 'nope'"),
        (("p1", "critic", 2, None), "has no cluster 'critic'"),
        (("p1", ACTOR_INFER, 1, 8), "must be requested at priority 6"),
        (("p1", ACTOR_TRAIN, 6, None), "only for 'actor_infer'"),
        (("p1", ACTOR_INFER, 6, 0), "step_target of 'p1_actor_infer' must be an int >= 1, got 0"),
        (("p1", ACTOR_INFER, 6, None), "got None"),
        (("p1", ACTOR_TRAIN, 1, 5), "step_target is only for generation"),
        (("p1", ACTOR_TRAIN, 9, None), "priority must be an int in 0..6, got 9"),
    ],
)
def test_bad_requests_name_the_value_and_change_nothing(args, message):
    state = seed_state()
    before = frozen(state)
    with pytest.raises(InvalidRequestError, match=message):
        state.request(*args)
    assert frozen(state) == before


def test_not_admitted_pipeline_cannot_request():
    state = seed_state()
    state.register("p3", seed_clusters((0,)))
    with pytest.raises(InvalidRequestError, match="registered but not admitted"):
        state.request("p3", ACTOR_TRAIN, TRAIN, None)
    with pytest.raises(InvalidRequestError, match="already registered"):
        state.register("p3", seed_clusters((0,)))


def test_release_generation_retires_demand_and_sleeps_workers():
    state = seed_state()
    state.request("p1", ACTOR_INFER, GEN, 8)
    cycle(state)
    state.apply_progress(progress("p1", 8, 3))
    assert state.release("p1", ACTOR_INFER) is True
    assert "p1" not in state.open_demand and "p1" not in state.progress
    plan, _ = cycle(state)
    assert plan.shrinks == {"p1": {0, 1, 2, 3}}
    assert all(plan.reasons[("p1", r)] == "released" for r in range(4))
    assert "p1" not in state.generation and "p1" not in state.planned_releases
    assert state.idle_gpus() == [0, 1, 2, 3]


def test_release_of_stage_frees_at_once_and_of_nothing_is_a_noop():
    state = seed_state()
    assert state.release("p1", ACTOR_TRAIN) is False
    state.request("p1", ACTOR_TRAIN, TRAIN, None)
    cycle(state)
    assert state.owner[:2] == ["p1_actor_train"] * 2
    assert state.release("p1", ACTOR_TRAIN) is False
    assert state.idle_gpus() == [0, 1, 2, 3]


def test_clearing_the_last_stream_retires_open_demand():
    state = seed_state()
    state.request("p1", ACTOR_INFER, GEN, 8)
    state.apply_progress(progress("p1", 4, 1, mode="lora", adapter_id="a"))
    state.apply_progress(progress("p1", 4, 1, mode="lora", adapter_id="b"))
    assert state.apply_progress(end("p1", mode="lora", adapter_id="a")) == APPLIED
    assert state.open_demand == {"p1": 8}
    assert state.apply_progress(end("p1", mode="lora", adapter_id="b")) == RETIRED
    assert state.open_demand == {}


def test_unregister_frees_everything_and_returns_cancelled_requests():
    state = seed_state()
    state.request("p1", ACTOR_INFER, GEN, 8)
    cycle(state)
    state.request("p1", ACTOR_TRAIN, TRAIN, None)
    state.request("p2", ACTOR_INFER, GEN, 8)
    cancelled = state.unregister("p1")
    assert [r.cluster_id for r in cancelled] == ["p1_actor_train"]
    assert state.idle_gpus() == [0, 1, 2, 3]
    assert "p1" not in state.open_demand and "p1" not in state.pipelines
    check_state(state)
    assert state.unregister("p1") == [], "idempotent"


def test_progress_latest_wins_and_is_clamped():
    state = seed_state()
    state.apply_progress(progress("p1", 10, 4))
    state.apply_progress(progress("p1", 10, 2))
    assert state.remaining("p1") == 8, "latest wins, even if lower"
    state.apply_progress(progress("p1", 10, 99))
    assert state.progress["p1"][("full", None)].completed == 10
    state.apply_progress(progress("p1", 10, -5))
    assert state.progress["p1"][("full", None)].completed == 0


@pytest.mark.parametrize(
    ("mode", "adapter", "message"),
    [
        ("lora", "a", r"reports \['full'\] progress; mixing in 'lora'"),
        ("sparse", None, "progress mode must be one of"),
        ("full", "a", "takes no adapter_id"),
    ],
)
def test_bad_progress_is_refused(mode, adapter, message):
    state = seed_state()
    state.apply_progress(progress("p1", 10, 1))
    before = frozen(state)
    with pytest.raises(InvalidRequestError, match=message):
        state.apply_progress(progress("p1", 10, 1, mode=mode, adapter_id=adapter))
    assert frozen(state) == before


def test_lora_needs_adapter():
    state = seed_state()
    with pytest.raises(InvalidRequestError, match="needs an adapter_id"):
        state.apply_progress(progress("p1", 10, 1, mode="lora"))


def test_registry_inflates_remaining_before_any_progress():
    state = seed_state()
    state.request("p1", ACTOR_INFER, GEN, 48)
    assert state.remaining("p1") == 48
    state.apply_progress(progress("p1", 48, 40))
    assert state.remaining("p1") == 8


def test_fenced_pipeline_is_refused_with_the_reason():
    state = seed_state()
    state.request("p1", ACTOR_TRAIN, TRAIN, None)
    cancelled = state.fence("p1", "wake failed")
    assert [r.cluster_id for r in cancelled] == ["p1_actor_train"]
    with pytest.raises(PipelineGoneError, match="fenced: wake failed"):
        state.request("p1", ACTOR_TRAIN, TRAIN, None)


def test_planned_release_validates_ranks():
    state = seed_state()
    with pytest.raises(InvalidRequestError, match=r"DP ranks \[4\] out of range 0..3"):
        state.plan_release("p1", [4])
    assert state.plan_release("p1", [0]) is False, "nothing awake to give back"


def test_start_of_empty_plan_changes_nothing():
    state = seed_state()
    before = frozen(state)
    state.start(Plan())
    assert frozen(state) == before and state.take_actions() == []


def test_late_reports_of_an_older_rollout_cannot_clear_the_next_rollouts_demand():
    """Progress may come from another process than the demand (miles' RolloutManager vs. its
    driver): rollout N's last count and end can arrive after rollout N+1 signalled demand. They
    carry rollout N's epoch, so they are ignored, whatever else happened in between."""
    state = seed_state()
    state.open_rollout("p1", 4)
    state.request("p1", ACTOR_INFER, GEN, 8)
    state.apply_progress(progress("p1", 8, 5, rollout_id=4, begin=True))
    state.open_rollout("p1", 5)  # rollout N+1 signals demand: its epoch starts, N's streams end
    assert state.apply_progress(progress("p1", 8, 8, rollout_id=4)) == IGNORED  # N's final count, late
    assert state.apply_progress(end("p1", rollout_id=4)) == IGNORED  # N's end, late
    assert state.open_demand == {"p1": 8} and state.remaining("p1") == 8
    state.apply_progress(progress("p1", 8, 0, rollout_id=5, begin=True))  # rollout N+1 begins
    state.apply_progress(progress("p1", 8, 3, rollout_id=5))
    assert state.remaining("p1") == 5
    assert state.apply_progress(end("p1", rollout_id=4)) == IGNORED, "still N's: changes nothing"
    assert state.remaining("p1") == 5
    assert state.apply_progress(end("p1", rollout_id=5)) == RETIRED, "its own end retires the demand"
