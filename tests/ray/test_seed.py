"""The seed scenario on a real local Ray cluster, and the ray backend's everyday behaviour: two
pipelines in their own actors and namespaces share 4 GPUs (train [0,1] / [2,3], infer [0..3]) for
5 rollouts each, through the hooks; connect() from a task; status; stale state; coalescing."""

from __future__ import annotations

import json
import time

import pytest

ray = pytest.importorskip("ray")

from rlix_plugin import cli, connect  # noqa: E402
from rlix_plugin.hookspecs import (  # noqa: E402
    InvalidRequestError,
    SchedulerTimeoutError,
    SchedulerUnavailableError,
)
from rlix_plugin.ray.names import SCHEDULER_NAME, pipeline_namespace  # noqa: E402

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


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(**INIT_OPTIONS)
    yield
    ray.shutdown()


@pytest.fixture
def rlix():
    """A fresh scheduler for the test (what an earlier test left is killed first)."""
    reset_rlix()
    client = connect(**POOL)
    yield client
    reset_rlix()


def test_seed_scenario_two_pipelines_in_own_actors_and_namespaces(rlix):
    pipelines = {"p1": seed_clusters(train=(0, 1)), "p2": seed_clusters(train=(2, 3))}
    actors = {
        pid: PipelineActor.options(name="pipeline", namespace=pipeline_namespace(pid)).remote(pid, clusters, POOL)
        for pid, clusters in pipelines.items()
    }
    reports = ray.get([actor.run.remote(5, 32) for actor in actors.values()], timeout=120)

    for report, train in zip(reports, ((0, 1), (2, 3)), strict=False):
        pid = report["pipeline_id"]
        assert report["rollouts"] == 5 and report["samples"] == 5 * 32
        # Failure mode F1: a rollout that started with no engine of its pipeline awake. Every
        # signal_demand returned a grant with awake workers (the scheduler checked them against
        # the engines' own answer to the wake).
        assert all(ranks for ranks in report["grants"]), report["grants"]
        assert report["train_gpus"] == [list(train)] * 5
        assert report["coordinator_namespace"] == [pipeline_namespace(pid)]
        assert report["resizes"] >= 5  # woken every rollout after training preempted it
    first, second = reports
    assert first["started"] < second["finished"] and second["started"] < first["finished"], "they ran together"
    snap = rlix.snapshot()
    assert snap["pipelines"] == {} and snap["idle_gpus"] == [0, 1, 2, 3] and snap["open_demand"] == {}
    # Unregistering killed each coordinator; only the pipeline actors remain in their namespaces.
    assert named_actors(pipeline_namespace("p1")) == ["pipeline"]
    for actor in actors.values():
        ray.kill(actor)


def test_connect_from_a_task_and_from_an_actor_finds_the_same_scheduler(rlix):
    @ray.remote(num_cpus=0)
    def from_task():
        from rlix_plugin import connect as task_connect

        return task_connect(create_if_missing=False).describe()["started_at"]

    @ray.remote(num_cpus=0)
    class FromActor:
        def started_at(self):
            from rlix_plugin import connect as actor_connect

            return actor_connect(create_if_missing=False).describe()["started_at"]

    started = rlix.describe()["started_at"]
    assert ray.get(from_task.remote(), timeout=60) == started
    actor = FromActor.remote()
    assert ray.get(actor.started_at.remote(), timeout=60) == started
    ray.kill(actor)


def test_status_shows_allocations_demand_progress_and_queue(rlix, capsys):
    engine = EngineStandIn("s1")
    hooks = hooks_for(engine, **POOL)
    blocker = EngineStandIn("s2")
    other = hooks_for(blocker, **POOL)
    hooks.register_pipeline(pipeline_id="s1", clusters=seed_clusters(train=(0, 1)))
    other.register_pipeline(pipeline_id="s2", clusters=seed_clusters(train=(0, 1), infer=(2, 3)))
    try:
        hooks.signal_demand(pipeline_id="s1", rollout_id=0, step_target=100, timeout_s=30)
        hooks.begin_progress_batch(pipeline_id="s1", rollout_id=0, step_target=100)
        hooks.bump_completed(pipeline_id="s1", rollout_id=0, count=40)
        assert hooks.plugin_manager.get_plugin("rlix-backend").flush_progress()
        other.request_gpus(pipeline_id="s2", cluster="actor_train", priority=1, timeout_s=30)
        # s1's training now waits behind s2's; run it in a thread and wait until it is queued.
        import threading

        waiter = threading.Thread(
            target=lambda: hooks.request_gpus(pipeline_id="s1", cluster="actor_train", priority=1, timeout_s=30)
        )
        waiter.start()
        wait_until(lambda: rlix.snapshot()["pending"], 10, "s1's training request queued")

        assert cli.main(["status"]) == 0
        text = capsys.readouterr().out
        assert "s1" in text and "actor_infer" in text and "awake dp" in text
        assert "open demand 100" in text and "full 40/100" in text
        assert "priority 1: s1_actor_train" in text
        assert cli.main(["status", "--json"]) == 0
        snap = json.loads(capsys.readouterr().out)
        assert snap["pipelines"]["s1"]["progress"][0]["completed"] == 40
        assert snap["pending"]["1"][0]["cluster_id"] == "s1_actor_train"
        assert cli.main(["status", "--watch", "0.01", "--count", "2", "--json"]) == 0
        assert len(capsys.readouterr().out.strip().splitlines()) == 2

        other.release(pipeline_id="s2", cluster="actor_train")
        waiter.join(30)
        assert not waiter.is_alive()
    finally:
        hooks.unregister_pipeline(pipeline_id="s1")
        other.unregister_pipeline(pipeline_id="s2")


def test_status_without_scheduler_says_so(capsys):
    reset_rlix()
    assert cli.main(["status"]) == 1
    err = capsys.readouterr().err
    assert "no rlix scheduler is running" in err and SCHEDULER_NAME in err
    with pytest.raises(SchedulerUnavailableError):
        connect(create_if_missing=False)
    # Nor does unregistering from a process that never registered anything.
    hooks_for(EngineStandIn("nobody"), **POOL).unregister_pipeline(pipeline_id="nobody")
    assert lookup(SCHEDULER_NAME) is None, "looking must not start a scheduler"


def test_progress_is_coalesced_and_the_final_count_arrives(rlix):
    engine = EngineStandIn("c1")
    hooks = hooks_for(engine, **POOL)
    backend = hooks.plugin_manager.get_plugin("rlix-backend")
    hooks.register_pipeline(pipeline_id="c1", clusters=seed_clusters(train=(0, 1)))
    try:
        hooks.signal_demand(pipeline_id="c1", rollout_id=0, step_target=10**9, timeout_s=30)
        hooks.begin_progress_batch(pipeline_id="c1", rollout_id=0, step_target=10**9)
        bumps = 0
        started = time.perf_counter()
        while time.perf_counter() - started < 0.5:
            hooks.bump_completed(pipeline_id="c1", rollout_id=0, count=1)
            bumps += 1
        elapsed = time.perf_counter() - started
        assert backend.flush_progress()
        snap = rlix.snapshot()
        reports = snap["progress_reports"]["c1"]
        assert snap["pipelines"]["c1"]["progress"][0]["completed"] == bumps
        # begin + at most one report per 0.05 s + the flush; never one per bump.
        assert bumps > 1000 and reports <= 2 + elapsed / 0.05 + 2, (bumps, reports)
        hooks.end_progress_batch(pipeline_id="c1", rollout_id=0)
        assert backend.flush_progress()
        assert rlix.snapshot()["pipelines"]["c1"]["progress"] == []
        assert rlix.snapshot()["open_demand"] == {}, "closing the last stream retires the open demand"
    finally:
        hooks.unregister_pipeline(pipeline_id="c1")


def test_stale_state_of_a_crashed_run_does_not_break_the_next(rlix):
    # A run whose pipeline process dies without unregistering (a crashed driver or actor).
    crashed = PipelineActor.options(name="pipeline", namespace=pipeline_namespace("st")).remote(
        "st", seed_clusters(train=(0, 1)), POOL
    )
    crashed.run.remote(1000, 32, 0.01)
    wait_until(lambda: "st" in rlix.describe()["pipelines"], 60, "the pipeline registered")
    ray.kill(crashed)
    # Its coordinator died with it; the scheduler reaps the pipeline and frees its GPUs.
    wait_until(lambda: "st" not in rlix.describe()["pipelines"], 10, "the dead pipeline reaped")
    snap = rlix.snapshot()
    assert "coordinator died" in snap["reaped"]["st"] and snap["idle_gpus"] == [0, 1, 2, 3]

    # The next run may reuse the pipeline id.
    engine = EngineStandIn("st")
    hooks = hooks_for(engine, **POOL)
    hooks.register_pipeline(pipeline_id="st", clusters=seed_clusters(train=(0, 1)))
    try:
        grant = hooks.signal_demand(pipeline_id="st", rollout_id=0, step_target=8, timeout_s=30)
        assert grant.dp_ranks and engine.awake == set(grant.dp_ranks)
        # Registering it again while it is alive is refused, and changes nothing.
        with pytest.raises(InvalidRequestError, match="already registered"):
            hooks_for(EngineStandIn("st"), **POOL).register_pipeline(
                pipeline_id="st", clusters=seed_clusters(train=(0, 1))
            )
        # A scheduler serving pipelines is never replaced by a caller asking for another pool...
        with pytest.raises(InvalidRequestError, match="serves pipelines"):
            connect(num_gpus=8, gpus_per_node=4, replace=True, operator="anything")
    finally:
        hooks.unregister_pipeline(pipeline_id="st")
    # ...nor an idle one, unless an operator asks: the error names both settings.
    with pytest.raises(InvalidRequestError, match="num_gpus: running 4, asked 8"):
        connect(num_gpus=8, gpus_per_node=4)
    assert connect().describe()["num_gpus"] == 4, "the refused call changed nothing"


def test_bad_registration_changes_nothing(rlix):
    hooks = hooks_for(EngineStandIn("bad"), **POOL)
    with pytest.raises(InvalidRequestError, match="out of range"):
        hooks.register_pipeline(pipeline_id="bad", clusters=seed_clusters(train=(0, 1), infer=(2, 3, 4, 5)))
    assert named_actors(pipeline_namespace("bad")) == []
    assert rlix.describe()["pipelines"] == []


def test_a_timeout_carries_the_schedulers_diagnostic(rlix):
    holder, waiter = hooks_for(EngineStandIn("t1"), **POOL), hooks_for(EngineStandIn("t2"), **POOL)
    holder.register_pipeline(pipeline_id="t1", clusters=seed_clusters(train=(0, 1)))
    waiter.register_pipeline(pipeline_id="t2", clusters=seed_clusters(train=(0, 1)))
    try:
        holder.request_gpus(pipeline_id="t1", cluster="actor_train", priority=1, timeout_s=10)
        with pytest.raises(SchedulerTimeoutError) as caught:
            waiter.request_gpus(pipeline_id="t2", cluster="actor_train", priority=1, timeout_s=0.5)
        assert "t2_actor_train was not granted within 0.5s" in str(caught.value)
        assert "t1_actor_train: [0, 1]" in caught.value.diagnostic, caught.value.diagnostic
        assert rlix.snapshot()["pending"] == {}, "the timed-out request was withdrawn"
    finally:
        holder.unregister_pipeline(pipeline_id="t1")
        waiter.unregister_pipeline(pipeline_id="t2")
