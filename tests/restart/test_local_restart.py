"""A scheduler restarted from its SQLite file (no Ray): leases, grants and pending requests survive;
nothing is planned until every pipeline reattached; retried calls with their idempotency keys
get what the first attempt would have got; a pipeline that never reattaches is fenced, then
reclaimed; the incarnation that was replaced can no longer write."""

from __future__ import annotations

import asyncio

import pytest

from rlix_plugin.backends.local import LocalPort, LocalScheduler
from rlix_plugin.backends.port import Registration
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, NotPipelineOwnerError
from rlix_plugin.scheduler.rehydrate import REQUEST, CallInFlight, PipelineReport
from rlix_plugin.scheduler.service import SchedulerService
from rlix_plugin.scheduler.store import SqliteStore, StaleWriterError
from rlix_plugin.scheduler.topology import PoolTopology

from ..scheduler.support import FakeEngines, run, seed_clusters, wait_until

POOL = PoolTopology(4, 4)


def service_on(path, **options) -> SchedulerService:
    store = SqliteStore(path)
    service = SchedulerService(POOL, store=store, resize_timeout_s=5.0, **options)
    stored = store.load()
    if stored is not None:
        service.restore(stored.payload)
    return service


def test_a_restart_keeps_grants_and_requests_and_answers_retries_with_the_same_grant(tmp_path):
    path = tmp_path / "state.db"

    async def scenario() -> None:
        engines = FakeEngines()
        first = service_on(path)
        await first.start()
        leases = {
            pid: await first.register_pipeline(pid, seed_clusters(train), engines.resize)
            for pid, train in (("p1", (0, 1)), ("p2", (2, 3)), ("p3", (0, 1)))
        }
        granted = await first.request_gpus("p1", leases["p1"], ACTOR_TRAIN, 1, None, 5.0, "k1")
        demand = await first.signal_demand("p2", leases["p2"], 0, 16, 5.0, "k2")
        waiting = asyncio.ensure_future(first.request_gpus("p3", leases["p3"], ACTOR_TRAIN, 1, None, 30.0, "k3"))
        await wait_until(lambda: "p3_actor_train" in first.state.pending, what="p3 waiting for p1's GPUs")
        await first._flush()  # the crash comes after the last save
        awake_p2 = tuple(sorted(engines.awake["p2"]))

        # -- the scheduler dies; a new incarnation starts from the file -----------------------
        second = service_on(path)
        await second.start()
        assert second.recovering and sorted(second.unreconciled) == ["p1", "p2", "p3"]
        assert second.state.fixed["p1_actor_train"].gpus == granted.gpus
        assert "p3_actor_train" in second.state.pending and second.state.open_demand == {"p2": 16}
        # The old incarnation is superseded: a grant it makes now is never saved, so never answered.
        with pytest.raises(StaleWriterError):  # nor can it confirm a release
            await first.release("p1", leases["p1"], ACTOR_TRAIN, 5.0)
        await wait_until(waiting.done, what="the old incarnation's answer to p3")
        assert isinstance(waiting.exception(), StaleWriterError)
        assert SqliteStore(path).load().epoch == second.epoch

        # Retried calls wait for their pipeline to reattach (nothing is planned before).
        retry3 = asyncio.ensure_future(second.request_gpus("p3", leases["p3"], ACTOR_TRAIN, 1, None, 30.0, "k3"))
        retry1 = asyncio.ensure_future(second.request_gpus("p1", leases["p1"], ACTOR_TRAIN, 1, None, 30.0, "k1"))
        await asyncio.sleep(0.05)
        assert not retry3.done() and not retry1.done()
        with pytest.raises(NotPipelineOwnerError):
            await second.reattach("p1", "not-the-lease", engines.resize, PipelineReport())
        await second.reattach(
            "p1",
            leases["p1"],
            engines.resize,
            PipelineReport((), {}, (CallInFlight("k1", REQUEST, ACTOR_TRAIN, 20.0),)),
        )
        await second.reattach("p2", leases["p2"], engines.resize, PipelineReport(awake_p2, {}, ()))
        assert second.recovering, "p3 has not reattached yet"
        await second.reattach(
            "p3",
            leases["p3"],
            engines.resize,
            PipelineReport((), {}, (CallInFlight("k3", REQUEST, ACTOR_TRAIN, 20.0),)),
        )
        assert not second.recovering
        # p1's grant was made before the crash: its retry gets it, not "already held".
        again = await asyncio.wait_for(retry1, 5.0)
        assert again.gpus == granted.gpus == (0, 1)
        # p3's request survived: it is granted once p1 gives the GPUs back.
        await second.release("p1", leases["p1"], ACTOR_TRAIN, 5.0)
        third = await asyncio.wait_for(retry3, 5.0)
        assert third.gpus == (0, 1)
        # p2's engines kept serving through the restart.
        assert second.state.gen_grant("p2")[1] == demand.dp_ranks
        await second.stop()

    run(scenario())


def test_a_pipeline_that_never_reattaches_is_fenced_then_reclaimed(tmp_path):
    path = tmp_path / "state.db"

    async def scenario() -> None:
        engines = FakeEngines()
        first = service_on(path)
        await first.start()
        lease1 = await first.register_pipeline("p1", seed_clusters((0, 1)), engines.resize)
        lease2 = await first.register_pipeline("p2", seed_clusters((2, 3)), engines.resize)
        await first.request_gpus("p2", lease2, ACTOR_TRAIN, 1, None, 5.0, "k")
        await first.signal_demand("p1", lease1, 0, 8, 5.0, "d")
        await first.stop()

        second = service_on(path, fence_grace_s=0.05)
        await second.start()
        await second.reattach("p1", lease1, engines.resize, PipelineReport(tuple(sorted(engines.awake["p1"])), {}, ()))
        assert second.expire_unreconciled("did not reattach in time") == ["p2"]
        assert "did not reattach" in second.state.fenced["p2"] and not second.recovering
        await wait_until(lambda: "p2" not in second.state.pipelines, what="p2 reclaimed after its grace")
        assert "p2" in second.reclaimed and second.state.fixed == {}
        # The pipeline that did reattach plans and is granted as usual.
        grant = await second.request_gpus("p1", lease1, ACTOR_TRAIN, 1, None, 5.0, "t")
        assert grant.gpus == (0, 1)
        await second.stop()

    run(scenario())


def test_the_local_backend_restores_from_its_state_file_and_reattaches_through_its_port(tmp_path):
    path = tmp_path / "local.db"
    first = LocalScheduler(4, 4, state_path=path)
    port = LocalPort(first)
    awake: set[int] = set()

    def resize(pid: str, remove: tuple[int, ...], add: tuple[int, ...]) -> tuple[int, ...]:
        awake.difference_update(remove)
        awake.update(add)
        return tuple(sorted(awake))

    try:
        lease = port.register(Registration("p1", seed_clusters((0, 1))), resize)
        grant = port.signal_demand("p1", lease, 0, 8, 5.0)
    finally:
        first.close()
        port.close()
    second = LocalScheduler(4, 4, state_path=path)
    port = LocalPort(second)
    try:
        assert second.restored == ["p1"] and second.snapshot()["recovering"] == ["p1"]
        done = port.reattach("p1", lease, resize, PipelineReport(tuple(sorted(awake)), {}, ()))
        assert done["reconciled"] is True
        snap = second.snapshot()
        assert snap["recovering"] == [] and snap["pipelines"]["p1"]["clusters"][ACTOR_INFER]["awake_dp_ranks"] == list(
            grant.dp_ranks
        )
        train = port.request("p1", lease, ACTOR_TRAIN, 1, None, 5.0)
        assert train.gpus == (0, 1)
    finally:
        second.close()
        port.close()
    # Without a state file nothing is kept: a new scheduler starts empty.
    plain = LocalScheduler(4, 4)
    try:
        assert plain.restored == [] and plain.snapshot()["pipelines"] == {}
    finally:
        plain.close()


def test_a_state_file_needs_a_pool_size(tmp_path):
    from rlix_plugin.backends.local import make_backend
    from rlix_plugin.hookspecs import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=r"state_path=.*needs num_gpus"):
        make_backend(lambda *_: None, state_path=str(tmp_path / "s.db"))
    assert not (tmp_path / "s.db").exists(), "nothing was created"
