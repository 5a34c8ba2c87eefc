"""Plan validation names the broken invariant and leaves the state as it was."""

from __future__ import annotations

import copy

import pytest

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, PlanInvariantError, Priority
from rlix_plugin.scheduler.planner import FixedGrant, Plan
from rlix_plugin.scheduler.validation import check_state, validate_plan

from .support import seed_state


def held_state():
    state = seed_state()
    state.request("p1", ACTOR_INFER, Priority.GENERATION, 8)
    plan = Plan(expands={"p1": {0, 1}})
    validate_plan(state, plan)
    state.apply(plan)
    state.request("p2", ACTOR_TRAIN, Priority.ACTOR_TRAINING, None)
    return state


@pytest.mark.parametrize(
    ("plan", "invariant"),
    [
        (Plan(expands={"p1": {2}}, shrinks={}), None),
        (Plan(expands={"p1": {0}}), "expand only sleeping workers"),
        (Plan(shrinks={"p1": {3}}), "shrink only awake workers"),
        (Plan(shrinks={"p1": {9}}), "DP ranks within bounds"),
        (Plan(expands={"p2": {0}}), "only generation clusters shrink or expand"),
        (Plan(expands={"ghost": {0}}), "referenced clusters exist"),
        (Plan(grants=[FixedGrant("p2_actor_train", (2, 3))], expands={"p1": {2}}), "no GPU in two places"),
        (Plan(grants=[FixedGrant("p1_actor_train", (0, 1))]), "referenced clusters exist"),
        (Plan(grants=[FixedGrant("p2_actor_train", (1, 2))]), "fixed device mapping"),
        (Plan(shrinks={"p1": {0}}, expands={"p1": {0}}), "no shrink and re-grant in one cycle"),
    ],
)
def test_each_invariant(plan, invariant):
    state = held_state()
    before = copy.deepcopy(state.owner), copy.deepcopy(state.generation), dict(state.pending)
    if invariant is None:
        validate_plan(state, plan)
        return
    with pytest.raises(PlanInvariantError, match=f"invariant '{invariant}' broken"):
        validate_plan(state, plan)
    assert (state.owner, state.generation, dict(state.pending)) == before


def test_released_cluster_cannot_be_expanded_before_execution():
    state = held_state()
    state.release("p1", ACTOR_INFER)
    with pytest.raises(PlanInvariantError, match="no cluster both allocated and removed"):
        validate_plan(state, Plan(expands={"p1": {2}}))
    validate_plan(state, Plan(expands={"p1": {2}}), executed=True)


def test_check_state_catches_a_corrupted_table():
    state = held_state()
    check_state(state)
    state.owner[3] = ("p2", 3)
    with pytest.raises(PlanInvariantError, match=r"disagrees with allocations on GPUs \[3\]"):
        check_state(state)
