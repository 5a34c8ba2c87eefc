"""A pipeline can only touch what it was granted (local backend): a neighbour on the same
scheduler, and code holding a plugin manager that registered nothing, try every mutating call
against a victim; each is refused with NotPipelineOwnerError naming the victim, or -- on the
progress hot path -- dropped, and the scheduler's state does not change."""

from __future__ import annotations

import pytest

from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ACTOR_TRAIN,
    InvalidRequestError,
    NotPipelineOwnerError,
    PipelineLimits,
    Priority,
)

from .support import Engines, comparable, hooks_on, seed_clusters

TRAIN = Priority.ACTOR_TRAINING


@pytest.fixture
def world():
    scheduler = LocalScheduler(4, 4)
    options = {"scheduler": scheduler}
    victim = hooks_on("local", options, Engines("victim"))
    neighbour = hooks_on("local", options, Engines("neighbour"))
    foreign = hooks_on("local", options)
    victim.register_pipeline(pipeline_id="victim", clusters=seed_clusters((0, 1)))
    neighbour.register_pipeline(pipeline_id="neighbour", clusters=seed_clusters((2, 3)))
    victim.signal_demand(pipeline_id="victim", rollout_id=0, step_target=8, timeout_s=10)
    victim.begin_progress_batch(pipeline_id="victim", rollout_id=0, step_target=8)
    victim.bump_completed(pipeline_id="victim", rollout_id=0, count=3)
    assert victim.plugin_manager.backend.flush_progress(5)
    try:
        yield scheduler, victim, neighbour, foreign
    finally:
        for hooks in (victim, neighbour, foreign):
            hooks.plugin_manager.backend.close()
        scheduler.close()


ATTACKS = [
    ("request_gpus", {"cluster": ACTOR_TRAIN, "priority": TRAIN, "timeout_s": 1}),
    ("signal_demand", {"rollout_id": 1, "step_target": 10**12, "timeout_s": 1}),
    ("release", {"cluster": ACTOR_INFER}),
    ("release", {"cluster": ACTOR_TRAIN}),
]


@pytest.mark.parametrize("who", ["neighbour", "foreign"])
@pytest.mark.parametrize(("call", "kwargs"), ATTACKS, ids=[f"{c}-{k.get('cluster', '')}" for c, k in ATTACKS])
def test_mutating_calls_for_someone_else_are_refused_and_change_nothing(world, who, call, kwargs):
    scheduler, victim, neighbour, foreign = world
    attacker = {"neighbour": neighbour, "foreign": foreign}[who]
    before = comparable(scheduler.snapshot())
    with pytest.raises(NotPipelineOwnerError, match="pipeline 'victim' was not registered through this local"):
        getattr(attacker, call)(pipeline_id="victim", **kwargs)
    assert comparable(scheduler.snapshot()) == before


@pytest.mark.parametrize("who", ["neighbour", "foreign"])
def test_forged_progress_and_unregister_are_dropped(world, who, caplog):
    scheduler, victim, neighbour, foreign = world
    attacker = {"neighbour": neighbour, "foreign": foreign}[who]
    before = comparable(scheduler.snapshot())
    # "Nothing left": the forgery would take the victim's engines if it were believed.
    attacker.begin_progress_batch(pipeline_id="victim", rollout_id=0, step_target=8, initial_completed=8)
    attacker.bump_completed(pipeline_id="victim", rollout_id=0, count=8)
    attacker.end_progress_batch(pipeline_id="victim", rollout_id=0)
    attacker.unregister_pipeline(pipeline_id="victim", reason="forged")
    attacker.plugin_manager.backend.flush_progress(5)
    assert comparable(scheduler.snapshot()) == before
    assert "progress signal lost for pipeline 'victim'" in caplog.text


def test_a_forged_lease_at_the_scheduler_itself_is_refused(world):
    scheduler, *_ = world
    service = scheduler.service
    before = comparable(scheduler.snapshot())
    for attempt in (
        service.request_gpus("victim", "guessed-lease", ACTOR_TRAIN, TRAIN, None, 1.0),
        service.release("victim", "guessed-lease", ACTOR_INFER),
        service.unregister_pipeline("victim", "guessed-lease", "forged"),
    ):
        with pytest.raises(NotPipelineOwnerError, match="pipeline 'victim': the caller does not hold its lease"):
            scheduler.call(attempt, timeout_s=5)
    with pytest.raises(NotPipelineOwnerError, match="operator action"):
        scheduler.call(service.unregister_pipeline("victim", None, "forged", operator="guess"), timeout_s=5)
    assert comparable(scheduler.snapshot()) == before


def test_a_stage_is_granted_once(world):
    scheduler, victim, *_ = world
    grant = victim.request_gpus(pipeline_id="victim", cluster=ACTOR_TRAIN, priority=TRAIN, timeout_s=10)
    assert grant.gpus == (0, 1)
    before = comparable(scheduler.snapshot())
    with pytest.raises(InvalidRequestError, match="'victim_actor_train' is already held"):
        victim.request_gpus(pipeline_id="victim", cluster=ACTOR_TRAIN, priority=TRAIN, timeout_s=10)
    assert comparable(scheduler.snapshot()) == before


def test_declared_limits_bound_demand_and_bundles():
    scheduler = LocalScheduler(4, 4)
    try:
        greedy = hooks_on("local", {"scheduler": scheduler}, Engines("greedy"))
        honest = hooks_on("local", {"scheduler": scheduler}, Engines("honest"))
        greedy.register_pipeline(
            pipeline_id="greedy",
            clusters=seed_clusters((0, 1)),
            limits=PipelineLimits(max_step_target=64, max_bundles=2),
        )
        honest.register_pipeline(pipeline_id="honest", clusters=seed_clusters((2, 3)))
        with pytest.raises(
            InvalidRequestError, match="step_target of 'greedy_actor_infer' is 1000000000000, above the 64"
        ):
            greedy.signal_demand(pipeline_id="greedy", rollout_id=0, step_target=10**12, timeout_s=5)
        assert scheduler.snapshot()["open_demand"] == {}
        grant = greedy.signal_demand(pipeline_id="greedy", rollout_id=0, step_target=64, timeout_s=5)
        assert len(grant.dp_ranks) == 2, "never more than its quota, with the pool idle"
        honest.signal_demand(pipeline_id="honest", rollout_id=0, step_target=8, timeout_s=5)
        assert scheduler.snapshot()["pipelines"]["greedy"]["clusters"][ACTOR_INFER]["awake_dp_ranks"].__len__() <= 2
        with pytest.raises(InvalidRequestError, match="min_bundles 5 exceeds its 4 generation bundles"):
            hooks_on("local", {"scheduler": scheduler}, Engines("x")).register_pipeline(
                pipeline_id="x", clusters=seed_clusters((0,)), limits=PipelineLimits(min_bundles=5)
            )
        for hooks in (greedy, honest):
            hooks.plugin_manager.backend.close()
    finally:
        scheduler.close()
