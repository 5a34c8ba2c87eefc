"""Trust on the Ray backend: a foreign process that reaches the cluster and guesses a lease, a
neighbour pipeline, and a caller that forges a coordinator resize are all refused and change
nothing; operator actions need the operator credential; a pipeline process that is alive but
stopped (SIGSTOP) is fenced and its GPUs return to the pool after the grace, while a long pause of
a healthy pipeline's own work does not fence it."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

ray = pytest.importorskip("ray")

from rlix_plugin import connect  # noqa: E402
from rlix_plugin.hookspecs import (  # noqa: E402
    ACTOR_INFER,
    ACTOR_TRAIN,
    MODE_FULL,
    NotPipelineOwnerError,
    Priority,
)
from rlix_plugin.progress import BEGIN, ProgressReport  # noqa: E402
from rlix_plugin.ray.names import COORDINATOR_NAME, SCHEDULER_NAME, pipeline_namespace  # noqa: E402

from ..ray.support import (  # noqa: E402
    INIT_OPTIONS,
    EngineStandIn,
    PipelineActor,
    hooks_for,
    lookup,
    reset_rlix,
    seed_clusters,
    wait_until,
)
from .support import comparable  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

POOL = {"num_gpus": 4, "gpus_per_node": 4}
OPERATOR = "the-operator-credential"
LIVENESS_S, GRACE_S, RESIZE_TIMEOUT_S = 2.0, 1.0, 2.0
TRAIN = int(Priority.ACTOR_TRAINING)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(**INIT_OPTIONS)
    yield
    ray.shutdown()


@pytest.fixture
def rlix():
    reset_rlix()
    client = connect(
        resize_timeout_s=RESIZE_TIMEOUT_S,
        operator=OPERATOR,
        liveness_timeout_s=LIVENESS_S,
        fence_grace_s=GRACE_S,
        **POOL,
    )
    yield client
    reset_rlix()


@ray.remote(num_cpus=0)
def forge(actor: tuple[str, str], method: str, *args):
    """Another process on the cluster: look an rlix actor up by name and call it directly."""
    name, namespace = actor
    handle = ray.get_actor(name, namespace=namespace)
    try:
        return ("ok", ray.get(getattr(handle, method).remote(*args), timeout=20))
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        return (type(cause).__name__.replace("RayTaskError(", "").rstrip(")"), str(exc))


SCHEDULER = (SCHEDULER_NAME, "rlix")


def guessed_calls(victim: str) -> list[tuple[str, tuple]]:
    guess = "0" * 43  # the shape of a real lease, not its value
    return [
        ("request_gpus", (victim, guess, f"{victim}_{ACTOR_TRAIN}", TRAIN, None, 2.0)),
        ("signal_demand", (victim, guess, 9, 8, 2.0)),
        ("release", (victim, guess, f"{victim}_{ACTOR_INFER}", 2.0)),
        ("planned_release", (victim, guess, (0, 1), 2.0)),
        ("unregister_pipeline", (victim, guess, "forged")),
        ("unregister_pipeline", (victim, None, "forged", "not-the-operator")),
    ]


def test_a_foreign_process_with_a_guessed_lease_is_refused_and_changes_nothing(rlix):
    victim = hooks_for(EngineStandIn("victim"), **POOL)
    victim.register_pipeline(pipeline_id="victim", clusters=seed_clusters(train=(0, 1)))
    try:
        victim.signal_demand(pipeline_id="victim", rollout_id=0, step_target=8, timeout_s=30)
        victim.request_gpus(pipeline_id="victim", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=30)
        before = comparable(rlix.snapshot())
        for method, args in guessed_calls("victim"):
            kind, message = ray.get(forge.remote(SCHEDULER, method, *args), timeout=60)
            assert kind == "NotPipelineOwnerError", (method, kind, message)
            assert "'victim'" in message, message
        # Progress is fire-and-forget: a forged report is dropped, and the answer says why.
        report = ProgressReport(
            BEGIN, "victim", 0, MODE_FULL, None, step_target=8, completed=8, target_weight_version=0
        )
        kind, dropped = ray.get(forge.remote(SCHEDULER, "apply_progress", "intruder", 1, "0" * 43, report))
        assert kind == "ok" and dropped.startswith("NotPipelineOwnerError"), dropped
        # So is a preemption report (it is on the engines' hot path).
        assert ray.get(forge.remote(SCHEDULER, "report_preempt", "victim", "0" * 43, 0, 4))[0] == "ok"
        assert comparable(rlix.snapshot()) == before, "a refused call changed the scheduler's state"
    finally:
        victim.unregister_pipeline(pipeline_id="victim")


def test_a_neighbour_cannot_act_for_the_victim_through_its_own_hooks(rlix):
    victim = hooks_for(EngineStandIn("victim"), **POOL)
    neighbour = hooks_for(EngineStandIn("neighbour"), **POOL)
    victim.register_pipeline(pipeline_id="victim", clusters=seed_clusters(train=(0, 1)))
    neighbour.register_pipeline(pipeline_id="neighbour", clusters=seed_clusters(train=(2, 3)))
    try:
        victim.request_gpus(pipeline_id="victim", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=30)
        before = comparable(rlix.snapshot())
        attacks = [
            ("request_gpus", {"cluster": ACTOR_TRAIN, "priority": Priority.ACTOR_TRAINING, "timeout_s": 1}),
            ("release", {"cluster": ACTOR_TRAIN}),
            ("signal_demand", {"rollout_id": 1, "step_target": 8, "timeout_s": 1}),
        ]
        for call, kwargs in attacks:
            with pytest.raises(NotPipelineOwnerError, match="'victim'"):
                getattr(neighbour, call)(pipeline_id="victim", **kwargs)
        neighbour.unregister_pipeline(pipeline_id="victim")  # not its own: dropped with a log line
        neighbour.bump_completed(pipeline_id="victim", rollout_id=0, count=100)  # the hot path never raises
        assert comparable(rlix.snapshot()) == before
        assert "victim" in rlix.describe()["pipelines"]
    finally:
        victim.unregister_pipeline(pipeline_id="victim")
        neighbour.unregister_pipeline(pipeline_id="neighbour")


def test_only_the_scheduler_can_resize_a_pipelines_engines(rlix):
    engine = EngineStandIn("victim")
    victim = hooks_for(engine, **POOL)
    victim.register_pipeline(pipeline_id="victim", clusters=seed_clusters(train=(0, 1)))
    try:
        coordinator = (COORDINATOR_NAME, pipeline_namespace("victim"))
        kind, message = ray.get(forge.remote(coordinator, "resize", "a guess", "victim", (), (0, 1, 2, 3)))
        assert kind == "NotPipelineOwnerError" and "only from the scheduler" in message, message
        assert engine.resizes == [] and engine.awake == set(), "the forged wake reached the engines"
        # The scheduler's own resizes still go through.
        assert victim.signal_demand(pipeline_id="victim", rollout_id=0, step_target=8, timeout_s=30).dp_ranks
        assert engine.awake
    finally:
        victim.unregister_pipeline(pipeline_id="victim")


def test_operator_actions_need_the_operator_credential(rlix):
    victim = hooks_for(EngineStandIn("victim"), **POOL)
    victim.register_pipeline(pipeline_id="victim", clusters=seed_clusters(train=(0, 1)))
    try:
        for credential in (None, "a guess"):
            with pytest.raises(NotPipelineOwnerError, match="operator credential"):
                rlix.drain(credential)
            with pytest.raises(NotPipelineOwnerError, match="operator credential"):
                rlix.shutdown(credential)
            with pytest.raises(NotPipelineOwnerError, match="operator credential"):
                rlix.kill_pipeline("victim", credential)
        described = rlix.describe()
        assert described["pipelines"] == ["victim"] and not described["draining"]
        assert rlix.drain(OPERATOR) == ["victim"]
        with pytest.raises(Exception, match="draining"):
            hooks_for(EngineStandIn("late"), **POOL).register_pipeline(
                pipeline_id="late", clusters=seed_clusters(train=(2, 3))
            )
    finally:
        victim.unregister_pipeline(pipeline_id="victim")


def test_a_stopped_pipeline_process_is_fenced_and_its_gpus_return_to_the_pool(rlix):
    namespace = pipeline_namespace("frozen")
    actor = PipelineActor.options(name="pipeline", namespace=namespace).remote(
        "frozen", seed_clusters(train=(0, 1)), POOL
    )
    actor.run.remote(10_000, 16, 0.01)
    wait_until(lambda: ray.get(actor.rollouts_done.remote(), timeout=10) >= 1, 60, "a first rollout")
    pid = ray.get(actor.process_id.remote(), timeout=10)
    neighbour = hooks_for(EngineStandIn("neighbour"), **POOL)
    neighbour.register_pipeline(pipeline_id="neighbour", clusters=seed_clusters(train=(2, 3)))
    os.kill(pid, signal.SIGSTOP)  # alive, holding its GPUs, answering nothing
    stopped_at = time.monotonic()
    try:
        grant = neighbour.request_gpus(
            pipeline_id="neighbour", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=60
        )
        waited = time.monotonic() - stopped_at
        assert grant.gpus == (2, 3)
        snap = rlix.snapshot()
        assert "frozen" not in snap["pipelines"], "its registration is gone"
        assert "after it was fenced" in snap["reclaimed"]["frozen"], snap["reclaimed"]
        # Bounded by the liveness timeout (or the resize timeout), the grace and the polls.
        assert waited < LIVENESS_S + RESIZE_TIMEOUT_S + GRACE_S + 10, waited
        wait_until(lambda: lookup("pipeline", namespace) is None, 30, "the stopped pipeline's actor killed")
        wait_until(lambda: set(rlix.snapshot()["idle_gpus"]) >= {0, 1}, 10, "its other GPUs back in the pool")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        neighbour.unregister_pipeline(pipeline_id="neighbour")


def test_a_long_pause_of_the_pipelines_own_work_does_not_fence_it(rlix):
    namespace = pipeline_namespace("pausing")
    actor = PipelineActor.options(name="pipeline", namespace=namespace).remote(
        "pausing", seed_clusters(train=(0, 1)), POOL
    )
    # Each generation tick takes 2.5 liveness timeouts (a checkpoint, a slow step): the resize
    # poll runs in a thread of its own, so the pipeline keeps answering.
    run = actor.run.remote(1, 2, 2.5 * LIVENESS_S)
    try:
        report = ray.get(run, timeout=60)
        assert report["rollouts"] == 1
        snap = rlix.snapshot()
        assert snap["reclaimed"] == {} and snap["reaped"] == {}
    finally:
        ray.kill(actor)
