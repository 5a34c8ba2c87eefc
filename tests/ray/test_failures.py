"""Failure behaviour of the Ray deployment: the orchestrator killed mid-run, the scheduler stopped
for good under blocked callers, coordinators that fail, hang or die, and progress to a scheduler
that is gone. (A scheduler that crashes is restarted and rehydrated: tests/restart/.)"""

from __future__ import annotations

import logging
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from rlix_plugin import connect  # noqa: E402
from rlix_plugin.hookspecs import NotPipelineOwnerError, PipelineGoneError, SchedulerUnavailableError  # noqa: E402
from rlix_plugin.ray.names import COORDINATOR_NAME, ORCHESTRATOR_NAME, SCHEDULER_NAME, pipeline_namespace  # noqa: E402

from .support import (  # noqa: E402
    INIT_OPTIONS,
    EngineStandIn,
    PipelineActor,
    hooks_for,
    lookup,
    named_actors,
    reset_rlix,
    seed_clusters,
    wait_until,
)

POOL = {"num_gpus": 4, "gpus_per_node": 4}
RESIZE_TIMEOUT_S = 2.0
OPERATOR = "operator-credential-of-the-test"


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(**INIT_OPTIONS)
    yield
    ray.shutdown()


@pytest.fixture
def rlix():
    reset_rlix()
    client = connect(resize_timeout_s=RESIZE_TIMEOUT_S, operator=OPERATOR, **POOL)
    yield client
    reset_rlix()


def test_orchestrator_killed_mid_run_leaves_pipelines_running(rlix):
    actors = [
        PipelineActor.options(name="pipeline", namespace=pipeline_namespace(pid)).remote(
            pid, seed_clusters(train), POOL
        )
        for pid, train in (("k1", (0, 1)), ("k2", (2, 3)))
    ]
    runs = [actor.run.remote(5, 48, 0.01) for actor in actors]
    wait_until(lambda: all(ray.get([a.rollouts_done.remote() for a in actors], timeout=10)), 60, "a first rollout each")
    ray.kill(lookup(ORCHESTRATOR_NAME))
    killed_at = ray.get([a.rollouts_done.remote() for a in actors], timeout=10)

    wait_until(lambda: lookup(ORCHESTRATOR_NAME) is None, 10, "the orchestrator gone")
    assert lookup(SCHEDULER_NAME) is not None, "the scheduler is still resolvable by name"
    reports = ray.get(runs, timeout=120)
    assert min(killed_at) < 5, "the kill happened mid-run"
    assert [r["rollouts"] for r in reports] == [5, 5]
    assert rlix.snapshot()["pipelines"] == {}
    # The front door comes back for the next pipeline.
    assert connect().allocate_pipeline_id("next") == "next-1"
    for actor in actors:
        ray.kill(actor)


def test_a_scheduler_stopped_for_good_fails_blocked_callers_within_two_seconds(rlix, caplog):
    holder_engine, waiter_engine = EngineStandIn("h"), EngineStandIn("w")
    holder, waiter = hooks_for(holder_engine, **POOL), hooks_for(waiter_engine, **POOL)
    holder.register_pipeline(pipeline_id="h", clusters=seed_clusters(train=(0, 1)))
    waiter.register_pipeline(pipeline_id="w", clusters=seed_clusters(train=(0, 1), infer=(0, 1)))
    holder.request_gpus(pipeline_id="h", cluster="actor_train", priority=1, timeout_s=30)

    outcomes: dict[str, tuple[BaseException | None, float]] = {}

    def blocked(name, call):
        try:
            call()
            outcomes[name] = (None, time.monotonic())
        except BaseException as exc:
            outcomes[name] = (exc, time.monotonic())

    threads = [
        threading.Thread(
            target=blocked,
            args=(
                "request_gpus",
                lambda: waiter.request_gpus(pipeline_id="w", cluster="actor_train", priority=1, timeout_s=60),
            ),
        ),
        threading.Thread(
            target=blocked,
            args=(
                "signal_demand",
                lambda: waiter.signal_demand(pipeline_id="w", rollout_id=0, step_target=8, timeout_s=60),
            ),
        ),
    ]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: len(rlix.snapshot()["pending"].get("1", [])) == 1 and rlix.snapshot()["pending"].get("6"),
        10,
        "both calls blocked on the scheduler",
    )

    killed = time.monotonic()
    ray.kill(rlix.scheduler, no_restart=True)  # deliberate: Ray does not restart it
    for thread in threads:
        thread.join(10)
    for name, (exc, at) in outcomes.items():
        assert isinstance(exc, SchedulerUnavailableError), (name, exc)
        assert SCHEDULER_NAME in str(exc) and "gone for good" in str(exc)
        assert at - killed < 2.0, (name, at - killed)
    assert set(outcomes) == {"request_gpus", "signal_demand"}

    # Progress never raises into the rollout: it is logged as lost.
    with caplog.at_level(logging.WARNING, logger="rlix_plugin"):
        started = time.perf_counter()
        holder.begin_progress_batch(pipeline_id="h", rollout_id=0, step_target=10)
        holder.bump_completed(pipeline_id="h", rollout_id=0, count=3)
        holder.end_progress_batch(pipeline_id="h", rollout_id=0)
        assert time.perf_counter() - started < 0.1
        holder.plugin_manager.get_plugin("rlix-backend").flush_progress()
    assert "progress signal lost" in caplog.text
    # Unregistering from a dead scheduler is a warning, not a second error in the finally.
    holder.unregister_pipeline(pipeline_id="h")
    waiter.unregister_pipeline(pipeline_id="w")


def test_failing_or_hanging_coordinator_fences_that_pipeline_and_others_keep_running(rlix):
    good_engine = EngineStandIn("good")
    failing_engine = EngineStandIn("failing", fail="engine OOM while waking")
    hanging_engine = EngineStandIn("hanging", hang=True)
    pipelines = {e.pipeline_id: (e, hooks_for(e, **POOL)) for e in (good_engine, failing_engine, hanging_engine)}
    infer = {"good": (0, 1), "failing": (2,), "hanging": (3,)}
    for pid, (_, hooks) in pipelines.items():
        hooks.register_pipeline(pipeline_id=pid, clusters=seed_clusters(train=(0,), infer=infer[pid]))

    errors: dict[str, BaseException] = {}

    def demand(pid):
        try:
            pipelines[pid][1].signal_demand(pipeline_id=pid, rollout_id=0, step_target=8, timeout_s=30)
        except BaseException as exc:
            errors[pid] = exc

    threads = [threading.Thread(target=demand, args=(pid,)) for pid in ("hanging", "failing")]
    threads[0].start()
    started = time.monotonic()
    wait_until(lambda: rlix.snapshot()["resizing"], 10, "the hanging wake in flight")
    # While that resize hangs, status reads and progress reports are served at once (failure
    # mode 12: nothing queues behind a long resize).
    good = pipelines["good"][1]
    asked = time.monotonic()
    good.begin_progress_batch(pipeline_id="good", rollout_id=0, step_target=8)
    good.bump_completed(pipeline_id="good", rollout_id=0, count=3)
    assert good.plugin_manager.get_plugin("rlix-backend").flush_progress(1.0)
    snap = rlix.snapshot()
    assert time.monotonic() - asked < 1.0
    assert snap["resizing"] and snap["pipelines"]["good"]["progress"][0]["completed"] == 3
    threads[1].start()
    grant = pipelines["good"][1].signal_demand(pipeline_id="good", rollout_id=0, step_target=8, timeout_s=30)
    for thread in threads:
        thread.join(30)
    # Resizes run concurrently: the good pipeline waited at most about one resize timeout.
    assert grant.dp_ranks and good_engine.awake == set(grant.dp_ranks)
    assert time.monotonic() - started < RESIZE_TIMEOUT_S + 3.0

    assert isinstance(errors["failing"], PipelineGoneError) and "engine OOM while waking" in str(errors["failing"])
    assert isinstance(errors["hanging"], PipelineGoneError) and "longer than 2.0s" in str(errors["hanging"])
    snap = rlix.snapshot()
    assert snap["pipelines"]["good"]["fenced"] is None
    assert "OOM" in snap["pipelines"]["failing"]["fenced"] and "longer" in snap["pipelines"]["hanging"]["fenced"]
    # A fenced pipeline's later calls fail at once with the reason.
    with pytest.raises(PipelineGoneError, match="fenced"):
        pipelines["failing"][1].request_gpus(pipeline_id="failing", cluster="actor_train", priority=1, timeout_s=5)

    # The others keep running: the good pipeline trains and rolls out again.
    good.request_gpus(pipeline_id="good", cluster="actor_train", priority=1, timeout_s=10)
    good.release(pipeline_id="good", cluster="actor_train")
    assert good.signal_demand(pipeline_id="good", rollout_id=1, step_target=8, timeout_s=10).dp_ranks

    hanging_engine.hang.set()
    for pid in ("failing", "hanging"):
        pipelines[pid][1].unregister_pipeline(pipeline_id=pid, reason="fenced")
    assert sorted(rlix.describe()["pipelines"]) == ["good"]
    good.unregister_pipeline(pipeline_id="good")


def test_dead_coordinator_gets_its_pipeline_reaped(rlix):
    engine = EngineStandIn("d1")
    hooks = hooks_for(engine, **POOL)
    hooks.register_pipeline(pipeline_id="d1", clusters=seed_clusters(train=(0, 1)))
    hooks.signal_demand(pipeline_id="d1", rollout_id=0, step_target=8, timeout_s=30)
    assert rlix.snapshot()["idle_gpus"] == []
    ray.kill(lookup(COORDINATOR_NAME, pipeline_namespace("d1")))
    wait_until(lambda: "d1" not in rlix.describe()["pipelines"], 10, "the pipeline reaped")
    assert rlix.snapshot()["idle_gpus"] == [0, 1, 2, 3]
    with pytest.raises(Exception, match="unknown pipeline 'd1'"):
        hooks.request_gpus(pipeline_id="d1", cluster="actor_train", priority=1, timeout_s=5)
    hooks.unregister_pipeline(pipeline_id="d1")


def test_kill_pipeline_kills_its_namespace(rlix):
    actor = PipelineActor.options(name="pipeline", namespace=pipeline_namespace("kp")).remote(
        "kp", seed_clusters(train=(0, 1)), POOL
    )
    run = actor.run.remote(1000, 32, 0.01)
    wait_until(lambda: "kp" in rlix.describe()["pipelines"], 60, "the pipeline registered")
    with pytest.raises(NotPipelineOwnerError, match="operator credential is wrong"):
        rlix.kill_pipeline("kp", "a guess")
    assert "kp" in rlix.describe()["pipelines"], "a refused kill changes nothing"
    killed = rlix.kill_pipeline("kp", OPERATOR)
    assert killed == sorted(["pipeline", COORDINATOR_NAME])
    # Killed before it was unregistered: the run dies with its actor, not with an error of its own.
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(run, timeout=30)
    wait_until(lambda: named_actors(pipeline_namespace("kp")) == [], 10, "the namespace emptied")
    assert "kp" not in rlix.describe()["pipelines"] and rlix.snapshot()["idle_gpus"] == [0, 1, 2, 3]
