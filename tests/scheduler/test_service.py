"""The async driver: blocking requests, timeouts with diagnostics, unregister, atomic
release-then-request, planned release, the resize-failure policy and the rebalance rule."""

from __future__ import annotations

import asyncio

import pytest

from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ACTOR_TRAIN,
    ClusterSpec,
    InvalidRequestError,
    PipelineGoneError,
    Priority,
    SchedulerTimeoutError,
)
from rlix_plugin.scheduler.service import SchedulerService
from rlix_plugin.scheduler.topology import PoolTopology
from rlix_plugin.scheduler.trigger import needs_rebalance

from .support import AsOwners, FakeEngines, end, progress, run, seed_clusters, wait_until

GEN, TRAIN = Priority.GENERATION, Priority.ACTOR_TRAINING


async def started(engines: FakeEngines, **options) -> SchedulerService:
    service = AsOwners(SchedulerService(PoolTopology(4, 4), **options))
    await service.start()
    for pid, train in (("p1", (0, 1)), ("p2", (2, 3))):
        await service.register_pipeline(pid, seed_clusters(train), engines.resize)
    return service


def test_signal_demand_blocks_until_a_worker_is_awake():
    async def scenario():
        engines = FakeEngines()
        service = await started(engines)
        grant = await service.signal_demand("p1", 0, 16, timeout_s=5)
        assert grant.scheduled and grant.dp_ranks == (0, 1, 2, 3)
        assert engines.awake["p1"] == {0, 1, 2, 3}, "the engines were woken before the call returned"
        assert service.state.open_demand == {"p1": 16}
        again = await service.signal_demand("p1", 1, 16, timeout_s=5)
        assert again.waited_s == 0.0, "an awake worker short-circuits"
        await service.stop()

    run(scenario())


def test_stage_request_preempts_and_release_frees():
    async def scenario():
        engines = FakeEngines()
        service = await started(engines)
        await service.signal_demand("p1", 0, 16, timeout_s=5)
        grant = await service.request_gpus("p2", ACTOR_TRAIN, TRAIN, None, timeout_s=5)
        assert grant.gpus == (2, 3)
        assert engines.awake["p1"] == {0, 1}
        assert ("p1", (2, 3), ()) in engines.calls, "shrunk through the resizer before the grant"
        await service.release("p2", ACTOR_TRAIN)
        assert service.state.fixed == {}
        await service.stop()

    run(scenario())


def test_timeout_raises_with_a_diagnostic_and_cancels_the_request():
    async def scenario():
        engines = FakeEngines()
        service = await started(engines)
        await service.request_gpus("p1", ACTOR_TRAIN, TRAIN, None, timeout_s=5)
        await service.request_gpus("p2", ACTOR_TRAIN, TRAIN, None, timeout_s=5)
        # Both stages hold every GPU; generation never preempts a stage, so this must time out.
        with pytest.raises(SchedulerTimeoutError) as caught:
            await service.signal_demand("p1", 3, 8, timeout_s=0.2)
        text = str(caught.value)
        assert "p1_actor_infer was not granted within 0.2s" in text
        assert "open demand (pipeline -> step target): {'p1': 8}" in text
        assert "p1_actor_train: [0, 1]" in text and "p2_actor_train: [2, 3]" in text
        assert "pending at priority 6: p1_actor_infer" in text
        assert "p1_actor_infer" not in service.state.pending, "a timed-out request is withdrawn"
        assert service.state.open_demand == {"p1": 8}, "but the demand stays durable"
        await service.stop()

    run(scenario())


def test_unregister_wakes_waiters_with_an_error():
    async def scenario():
        engines = FakeEngines()
        service = await started(engines)
        await service.request_gpus("p1", ACTOR_TRAIN, TRAIN, None, timeout_s=5)
        await service.request_gpus("p2", ACTOR_TRAIN, TRAIN, None, timeout_s=5)
        waiter = asyncio.ensure_future(service.signal_demand("p1", 0, 8, timeout_s=10))
        await wait_until(lambda: "p1_actor_infer" in service.state.pending, what="p1 waiting")
        await service.unregister_pipeline("p1", "driver crashed")
        with pytest.raises(PipelineGoneError, match="'p1' was unregistered \\(driver crashed\\)"):
            await waiter
        assert service.state.idle_gpus() == [0, 1]
        await service.stop()

    run(scenario())


def test_release_and_request_is_atomic():
    async def scenario():
        engines = FakeEngines()
        service = await started(engines)
        await service.request_gpus("p1", ACTOR_TRAIN, TRAIN, None, timeout_s=5)
        cycles = service.cycles
        grant = await service.release_and_request("p1", ACTOR_TRAIN, ACTOR_INFER, GEN, 8, timeout_s=5)
        assert grant.dp_ranks == (0, 1, 2, 3)
        assert service.cycles == cycles + 1, "one cycle served both the release and the request"
        with pytest.raises(InvalidRequestError, match="no cluster 'critic'"):
            await service.release_and_request("p1", ACTOR_INFER, "critic", 2, None, timeout_s=5)
        with pytest.raises(InvalidRequestError, match="for itself"):
            await service.release_and_request("p1", ACTOR_INFER, ACTOR_INFER, 6, 8, timeout_s=5)
        with pytest.raises(InvalidRequestError, match="priority must be an int in 0..6, got 7"):
            await service.release_and_request("p1", ACTOR_INFER, ACTOR_TRAIN, 7, None, timeout_s=5)
        assert service.state.generation["p1"].active == {0, 1, 2, 3}, "a bad call changes nothing"
        assert service.state.open_demand == {"p1": 8}
        await service.stop()

    run(scenario())


def test_planned_release_waits_until_workers_sleep():
    async def scenario():
        engines = FakeEngines()
        service = await started(engines)
        await service.signal_demand("p1", 0, 8, timeout_s=5)
        service.apply_progress(progress("p1", 8, 8))
        service.apply_progress(end("p1"))  # rollout over: no demand to re-wake them for
        await service.planned_release("p1", [1, 2], timeout_s=5)
        assert engines.awake["p1"] == {0, 3} and service.state.generation["p1"].active == {0, 3}
        await service.release("p1", ACTOR_INFER, timeout_s=5)
        assert engines.awake["p1"] == set() and "p1" not in service.state.generation
        await service.stop()

    run(scenario())


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("fail", "engine of p1 crashed"),
        ("lie", "still awake after sleep"),
        ("hang", "resize took longer than 0.3s"),
    ],
)
def test_failing_pipeline_is_fenced_and_the_other_keeps_running(fault, message):
    async def scenario():
        engines = FakeEngines()
        service = await started(engines, resize_timeout_s=0.3)
        await service.signal_demand("p1", 0, 8, timeout_s=5)
        getattr(engines, fault).add("p1")
        # p2's training preempts p1's workers on [2, 3]; p1's sleep fails.
        with pytest.raises(SchedulerTimeoutError):
            await service.request_gpus("p2", ACTOR_TRAIN, TRAIN, None, timeout_s=1.0)
        assert message in service.state.fenced["p1"]
        with pytest.raises(PipelineGoneError, match="fenced"):
            await service.signal_demand("p1", 1, 8, timeout_s=1)
        assert service.state.owner.entries()[2:] == (("p1", 2), ("p1", 3)), "GPUs of a failed sleep are not reused"
        await service.unregister_pipeline("p1", "fenced")
        grant = await service.request_gpus("p2", ACTOR_TRAIN, TRAIN, None, timeout_s=5)
        assert grant.gpus == (2, 3), "after the sick pipeline leaves, the other proceeds"
        await service.stop()

    run(scenario())


def test_missing_supply_side_is_reported_as_hooks_never_installed():
    async def scenario():
        service = AsOwners(SchedulerService(PoolTopology(4, 4)))
        await service.start()

        async def nobody(pid, remove, add):
            return None

        await service.register_pipeline("p1", seed_clusters((0, 1)), nobody)
        with pytest.raises(PipelineGoneError, match="hooks were never installed"):
            await service.signal_demand("p1", 0, 8, timeout_s=5)
        await service.stop()

    run(scenario())


def test_gap_ratio_rebalances_in_the_background_on_progress():
    async def scenario():
        engines = FakeEngines()
        service = await started(engines, policy="gap_ratio")
        await service.signal_demand("p1", 0, 100, timeout_s=5)
        service.state.apply_progress(progress("p1", 100, 0))
        assert not needs_rebalance(service.state), "one pipeline, all GPUs: nothing to do"
        service.state.demand.open("p2", 100)  # p2 holds nothing: a suspended cluster with demand
        service.state.generation["p2"] = type(service.state.generation["p1"])("p2")
        assert needs_rebalance(service.state)
        service.apply_progress(progress("p2", 100, 0))
        await wait_until(lambda: engines.awake.get("p2"), what="rebalance to p2")
        await wait_until(lambda: not needs_rebalance(service.state) and not service.state.moves, what="settled")
        assert len(engines.awake["p2"]) == 2 and len(engines.awake["p1"]) == 2
        # p1 almost done, p2 barely started: the least-complete half (p2) is far below its share.
        service.apply_progress(progress("p1", 100, 95))
        await wait_until(lambda: len(engines.awake["p2"]) == 3, what="p2 grows to 3")
        await service.stop()

    run(scenario())


def test_a_hung_resize_leaves_another_pipelines_training_grant_on_idle_gpus_immediate():
    """p1's wake on GPUs 2-3 never answers; p2's training on idle GPUs 0-1 is granted meanwhile,
    and so is a wake of p2 on GPUs no resize touches."""

    async def scenario():
        release_wake = asyncio.Event()
        calls = []

        async def p1_engines(pid, remove, add):
            calls.append((pid, remove, add))
            await release_wake.wait()  # hangs until the test lets it go
            return tuple(add)

        engines = FakeEngines()
        service = AsOwners(SchedulerService(PoolTopology(6, 6), resize_timeout_s=600, policy="gap_ratio"))
        await service.start()
        await service.register_pipeline("p1", {ACTOR_INFER: ClusterSpec(1, (2, 3))}, p1_engines)
        await service.register_pipeline(
            "p2", {ACTOR_INFER: ClusterSpec(1, (4, 5)), ACTOR_TRAIN: ClusterSpec(2, (0, 1))}, engines.resize
        )
        p1_demand = asyncio.ensure_future(service.signal_demand("p1", 0, 8, timeout_s=600))
        await wait_until(lambda: calls, what="p1's wake started")
        train = await asyncio.wait_for(service.request_gpus("p2", ACTOR_TRAIN, TRAIN, None, timeout_s=600), 10)
        assert train.gpus == (0, 1) and not p1_demand.done(), "granted while p1's wake is still in flight"
        wake = await asyncio.wait_for(service.signal_demand("p2", 0, 8, timeout_s=600), 10)
        assert wake.dp_ranks == (0, 1) and not p1_demand.done()
        snap = service.snapshot()
        assert snap["pipelines"]["p1"]["clusters"][ACTOR_INFER]["waking_dp_ranks"] == [0, 1]
        assert snap["gpu_holders"][2] == "p1_actor_infer[dp0] (waking)", "a bundle in transition is its own"
        release_wake.set()
        grant = await asyncio.wait_for(p1_demand, 10)
        assert grant.dp_ranks == (0, 1)
        await service.stop()

    run(scenario())


def test_bad_timeouts_are_refused():
    async def scenario():
        service = await started(FakeEngines())
        for bad in (0, -1, float("inf"), "5", True):
            with pytest.raises(InvalidRequestError, match="timeout_s must be a finite number > 0"):
                await service.signal_demand("p1", 0, 8, timeout_s=bad)
        assert service.state.open_demand == {}
        await service.stop()

    run(scenario())
