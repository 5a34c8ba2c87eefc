"""The scheduler actor crashing (SIGKILL of its process) under running pipelines on Ray: it is
restarted, rehydrates from the GCS store and reconciles with every pipeline before planning;
blocked calls get their grants, a resize in flight is settled with what the engines did, lost
progress is re-sent, dead pipelines are unregistered, the orchestrator keeps working; a
deliberate stop clears the saved state; coordinators and the store refuse stale schedulers."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from rlix_plugin import connect  # noqa: E402
from rlix_plugin.hookspecs import ACTOR_TRAIN, Priority  # noqa: E402
from rlix_plugin.ray.coordinator import SUPERSEDED, CoordinatorActor  # noqa: E402
from rlix_plugin.ray.kv_store import RayKVStore  # noqa: E402
from rlix_plugin.ray.names import COORDINATOR_NAME, pipeline_namespace  # noqa: E402
from rlix_plugin.scheduler.store import StaleWriterError  # noqa: E402

from ..ray.support import (  # noqa: E402
    INIT_OPTIONS,
    EngineStandIn,
    hooks_for,
    lookup,
    reset_rlix,
    seed_clusters,
    wait_until,
)

POOL = {"num_gpus": 4, "gpus_per_node": 4}
OPERATOR = "operator-of-the-restart-tests"
TRAIN = int(Priority.ACTOR_TRAINING)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(**INIT_OPTIONS)
    yield
    ray.shutdown()


@pytest.fixture
def rlix():
    reset_rlix()
    client = connect(resize_timeout_s=10.0, operator=OPERATOR, **POOL)
    yield client
    reset_rlix()


def crash(client) -> int:
    """SIGKILL the scheduler's process (what an OOM kill does); returns the epoch it had."""
    described = client.describe()
    os.kill(described["process_id"], signal.SIGKILL)
    return described["epoch"]


def recovered(client, epoch: int) -> dict:
    """Wait until a newer incarnation serves with every pipeline reattached."""
    return wait_until(
        lambda: (d := client.describe())["epoch"] > epoch and not d["recovering"] and d,
        60,
        "the scheduler restarted and reconciled",
    )


def in_thread(call):
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # the test asserts there was none
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_blocked_request_rides_through_a_crash_and_gets_the_grant(rlix):
    holder, waiter = hooks_for(EngineStandIn("h"), **POOL), hooks_for(EngineStandIn("w"), **POOL)
    holder.register_pipeline(pipeline_id="h", clusters=seed_clusters(train=(0, 1)))
    waiter.register_pipeline(pipeline_id="w", clusters=seed_clusters(train=(0, 1)))
    try:
        assert holder.request_gpus(pipeline_id="h", cluster=ACTOR_TRAIN, priority=TRAIN, timeout_s=30).gpus == (0, 1)
        thread, outcome = in_thread(
            lambda: waiter.request_gpus(pipeline_id="w", cluster=ACTOR_TRAIN, priority=TRAIN, timeout_s=60)
        )
        wait_until(lambda: rlix.snapshot()["pending"].get(str(TRAIN)), 10, "w blocked behind h")
        epoch = crash(rlix)
        recovered(rlix, epoch)
        snap = rlix.snapshot()
        assert snap["gpu_holders"][:2] == ["h_actor_train", "h_actor_train"], "h kept its grant through the crash"
        assert [r["cluster_id"] for r in snap["pending"][str(TRAIN)]] == ["w_actor_train"], "w still waits, once"
        assert not outcome, "the framework saw nothing but latency"
        holder.release(pipeline_id="h", cluster=ACTOR_TRAIN)
        thread.join(30)
        assert "error" not in outcome and outcome["value"].gpus == (0, 1)
        assert rlix.snapshot()["gpu_holders"][:2] == ["w_actor_train", "w_actor_train"]
    finally:
        holder.unregister_pipeline(pipeline_id="h")
        waiter.unregister_pipeline(pipeline_id="w")
    assert rlix.snapshot()["idle_gpus"] == [0, 1, 2, 3]


def test_a_crash_in_the_middle_of_a_wake_is_settled_with_what_the_engines_did(rlix):
    engine = EngineStandIn("slow", hang=True)
    hooks = hooks_for(engine, **POOL)
    hooks.register_pipeline(pipeline_id="slow", clusters=seed_clusters(train=(0, 1)))
    try:
        thread, outcome = in_thread(
            lambda: hooks.signal_demand(pipeline_id="slow", rollout_id=0, step_target=8, timeout_s=60)
        )
        wait_until(lambda: rlix.snapshot()["resizing"], 10, "the wake running in the pipeline's process")
        epoch = crash(rlix)
        time.sleep(0.5)  # the restarted scheduler waits for the wake; the engine takes its time
        assert not outcome and engine.awake == set()
        engine.hang.set()  # the wake the dead scheduler asked for completes now
        described = recovered(rlix, epoch)
        thread.join(30)
        assert "error" not in outcome, outcome
        grant = outcome["value"]
        assert grant.dp_ranks and set(grant.dp_ranks) <= engine.awake
        wakes = [add for _, add in engine.resizes if add]
        assert wakes[0] == tuple(sorted(grant.dp_ranks)), "the dead scheduler's wake was kept, not made twice"
        snap = rlix.snapshot()
        held = {
            int(h.split("[dp")[1].rstrip("]")) for h in snap["gpu_holders"] if h and h.startswith("slow_actor_infer")
        }
        assert held == engine.awake, "the scheduler's view is the engines'"
        assert described["epoch"] == epoch + 1
    finally:
        engine.hang.set()
        hooks.unregister_pipeline(pipeline_id="slow")


def test_progress_lost_in_the_gap_is_re_sent(rlix):
    hooks = hooks_for(EngineStandIn("p"), **POOL)
    hooks.register_pipeline(pipeline_id="p", clusters=seed_clusters(train=(0, 1)))
    backend = hooks.plugin_manager.get_plugin("rlix-backend")
    try:
        hooks.signal_demand(pipeline_id="p", rollout_id=0, step_target=64, timeout_s=30)
        hooks.begin_progress_batch(pipeline_id="p", rollout_id=0, step_target=64)
        hooks.bump_completed(pipeline_id="p", rollout_id=0, count=10)
        assert backend.flush_progress(10)
        epoch = crash(rlix)
        for _ in range(7):  # reports sent while the scheduler is down: some are lost
            hooks.bump_completed(pipeline_id="p", rollout_id=0, count=3)
        recovered(rlix, epoch)

        def completed():
            streams = rlix.snapshot()["pipelines"]["p"]["progress"]
            return streams and streams[0]["completed"] == 31

        wait_until(completed, 20, "the latest count re-sent after the restart")
        assert rlix.snapshot()["pipelines"]["p"]["remaining"] == 33
    finally:
        hooks.unregister_pipeline(pipeline_id="p")


def test_a_pipeline_that_died_while_the_scheduler_was_down_is_unregistered(rlix):
    hooks = hooks_for(EngineStandIn("gone"), **POOL)
    hooks.register_pipeline(pipeline_id="gone", clusters=seed_clusters(train=(0, 1)))
    hooks.request_gpus(pipeline_id="gone", cluster=ACTOR_TRAIN, priority=TRAIN, timeout_s=30)
    epoch = crash(rlix)
    ray.kill(lookup(COORDINATOR_NAME, pipeline_namespace("gone")))  # its process is gone too
    recovered(rlix, epoch)
    snap = rlix.snapshot()
    assert "gone" not in snap["pipelines"] and snap["idle_gpus"] == [0, 1, 2, 3]
    assert "coordinator" in snap["reaped"]["gone"]
    hooks.unregister_pipeline(pipeline_id="gone")


def test_the_orchestrator_and_new_pipelines_work_after_a_crash(rlix):
    first = hooks_for(EngineStandIn("a"), **POOL)
    first.register_pipeline(pipeline_id="a", clusters=seed_clusters(train=(0, 1)))
    orchestrator_started = rlix.orchestrator.describe.remote()
    epoch = crash(rlix)
    recovered(rlix, epoch)
    second = hooks_for(EngineStandIn("b"), **POOL)
    try:
        # Through the same orchestrator (not replaced), on the first attempt.
        second.register_pipeline(pipeline_id="b", clusters=seed_clusters(train=(2, 3)))
        assert ray.get(rlix.orchestrator.describe.remote())["started_at"] == ray.get(orchestrator_started)["started_at"]
        assert connect().allocate_pipeline_id("next").startswith("next-")
        assert second.request_gpus(pipeline_id="b", cluster=ACTOR_TRAIN, priority=TRAIN, timeout_s=30).gpus == (2, 3)
        assert sorted(rlix.describe()["pipelines"]) == ["a", "b"]
    finally:
        first.unregister_pipeline(pipeline_id="a")
        second.unregister_pipeline(pipeline_id="b")


def test_a_deliberate_shutdown_clears_the_saved_state(rlix):
    hooks = hooks_for(EngineStandIn("s"), **POOL)
    hooks.register_pipeline(pipeline_id="s", clusters=seed_clusters(train=(0, 1)))
    assert RayKVStore().load() is not None
    rlix.shutdown(OPERATOR)
    assert RayKVStore().load() is None, "nothing left to restart from"
    fresh = connect(operator=OPERATOR, **POOL)
    assert fresh.describe()["pipelines"] == [] and not fresh.describe()["recovering"]
    hooks.unregister_pipeline(pipeline_id="s")


def test_a_coordinator_refuses_the_resizes_of_a_superseded_scheduler(rlix):
    coordinator = CoordinatorActor.options(name="c", namespace="rlix.test-epochs").remote(
        "e", "rlix.test-epochs", "tok"
    )
    epoch = rlix.describe()["epoch"]  # the newest scheduler's
    try:
        assert ray.get(coordinator.reconcile.remote(epoch + 1), timeout=10) is False, (
            "an epoch no scheduler claimed is refused"
        )
        old_watch = coordinator.watch.remote(epoch - 1)
        assert ray.get(coordinator.reconcile.remote(epoch), timeout=10) is True
        assert ray.get(coordinator.reconcile.remote(epoch - 1), timeout=10) is False, "an older epoch changes nothing"
        with pytest.raises(ray.exceptions.RayTaskError, match=f"superseded by epoch {epoch}"):
            ray.get(coordinator.resize.remote("tok", "e", (), (0,), epoch=epoch - 1), timeout=10)
        new_watch = coordinator.watch.remote(epoch)
        assert ray.get(old_watch, timeout=10) == SUPERSEDED, "the dead scheduler's watch is let go"
        ready, _ = ray.wait([new_watch], timeout=0.2)
        assert not ready, "the current scheduler's watch stays pending"
        queued = ray.get(coordinator.describe.remote(), timeout=10)
        assert queued["epoch"] == epoch and queued["queued"] == 1, "one reconcile request for the pipeline process"
    finally:
        ray.kill(coordinator)


def test_the_gcs_store_refuses_a_stale_writer():
    old, new = RayKVStore("test-store"), RayKVStore("test-store")
    try:
        first = old.claim()
        old.save(first, 1, {"by": "old"})
        second = new.claim()
        new.save(second, 1, {"by": "new"})
        with pytest.raises(StaleWriterError):
            old.save(first, 2, {"by": "old, late"})
        stored = new.load()
        assert (stored.epoch, stored.payload) == (second, {"by": "new"})
    finally:
        new.clear()
    assert new.load() is None
