"""Plan validation names the broken invariant and leaves the state as it was; check_state sees
a table that disagrees with the allocations and the moves in flight."""

from __future__ import annotations

import pytest

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, PlanInvariantError, Priority
from rlix_plugin.scheduler.plan import IDLE, Move, Plan, donated_to, preempted_by
from rlix_plugin.scheduler.validation import check_state, validate_plan

from .support import plain, seed_state, settle


def held_state():
    """p1 awake on ranks 0 and 1 (GPUs 0-1), p2 waiting for its training GPUs 2-3."""
    state = seed_state()
    state.request("p1", ACTOR_INFER, Priority.GENERATION, 8)
    settle(state, Plan([Move(IDLE, wakes={"p1": {0, 1}})]))
    state.request("p2", ACTOR_TRAIN, Priority.ACTOR_TRAINING, None)
    return state


def wake(pid, *ranks):
    return Move(IDLE, wakes={pid: set(ranks)})


def grant(cid, gpus, sleeps=None):
    return Move(preempted_by(cid), sleeps=sleeps or {}, grant=cid, grant_gpus=gpus)


@pytest.mark.parametrize(
    ("moves", "invariant"),
    [
        ([wake("p1", 2)], None),
        ([grant("p2_actor_train", (2, 3))], None),
        ([Move(donated_to("p2"), sleeps={"p1": {1}}, wakes={"p1": {3}})], None),
        ([wake("p1", 0)], "wake only sleeping workers"),
        ([Move("x", sleeps={"p1": {3}})], "sleep only awake workers"),
        ([Move("x", sleeps={"p1": {9}})], "DP ranks within bounds"),
        ([wake("p2", 0)], "only generation clusters shrink or expand"),
        ([wake("ghost", 0)], "referenced clusters exist"),
        ([grant("p2_actor_train", (2, 3)), wake("p1", 2)], "no GPU in two places"),
        ([grant("p1_actor_train", (0, 1))], "referenced clusters exist"),
        ([grant("p2_actor_train", (1, 2))], "fixed device mapping"),
        ([Move("x", sleeps={"p1": {0}}, wakes={"p1": {0}})], "no sleep and wake of one rank in one plan"),
        # A target may only land on GPUs its own move frees, never on another move's.
        ([Move("x", sleeps={"p1": {0}}), wake("p2", 0)], "only generation clusters shrink or expand"),
        ([Move("x", sleeps={"p1": {0}}), Move("y", wakes={"p1": {0}})], "no sleep and wake of one rank in one plan"),
        (
            [Move("x", sleeps={"p1": {1}}), grant("p2_actor_train", (2, 3)), wake("p1", 1)],
            "no sleep and wake of one rank in one plan",
        ),
    ],
)
def test_each_invariant(moves, invariant):
    state = held_state()
    before = plain(state)
    plan = Plan(moves)
    if invariant is None:
        validate_plan(state, plan)
        return
    with pytest.raises(PlanInvariantError, match=f"invariant '{invariant}' broken"):
        validate_plan(state, plan)
    assert plain(state) == before


def test_a_wake_cannot_take_gpus_another_move_frees():
    state = seed_state()
    state.request("p1", ACTOR_INFER, Priority.GENERATION, 8)
    settle(state, Plan([Move(IDLE, wakes={"p1": {0, 1, 2, 3}})]))
    state.request("p2", ACTOR_INFER, Priority.GENERATION, 8)
    crossed = Plan([Move("x", sleeps={"p1": {3}}), Move("y", wakes={"p2": {3}})])
    with pytest.raises(PlanInvariantError, match="'no GPU in two places' broken: GPU 3 wanted by p2"):
        validate_plan(state, crossed)
    validate_plan(state, Plan([Move("x", sleeps={"p1": {3}}, wakes={"p2": {3}})]))


def test_released_cluster_cannot_be_woken():
    state = held_state()
    state.release("p1", ACTOR_INFER)
    with pytest.raises(PlanInvariantError, match="no cluster both allocated and removed"):
        validate_plan(state, Plan([wake("p1", 2)]))


def test_a_rank_in_transition_cannot_move_again():
    state = held_state()
    state.start(Plan([Move("x", sleeps={"p1": {1}})]))  # its sleep is in flight, unanswered
    assert state.take_actions()
    with pytest.raises(PlanInvariantError, match="DP rank 1 is not awake"):
        validate_plan(state, Plan([Move("y", sleeps={"p1": {1}})]))
    with pytest.raises(PlanInvariantError, match="DP rank 1 is awake or already moving"):
        validate_plan(state, Plan([wake("p1", 1)]))
    check_state(state)


def test_check_state_catches_a_corrupted_table():
    state = held_state()
    check_state(state)
    state.owner.set((3,), ("p2", 3))
    with pytest.raises(PlanInvariantError, match="disagrees with allocations on GPU 3"):
        check_state(state)
