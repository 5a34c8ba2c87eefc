"""The weight-update gate, as it runs inside a training rank (verl's ``WorkerDict`` actor)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

import torch

from rlix_plugin.integrations.verl.weight_sync import SkippedSync, SyncFilter, restrict


class Adapter:
    """verl's rollout adapter: what resume and update_weights did."""

    def __init__(self, replica_rank: int) -> None:
        self.replica_rank = replica_rank
        self.calls: list[tuple[str, object]] = []

    async def resume(self, tags: list[str]) -> None:
        self.calls.append(("resume", tuple(tags)))

    async def update_weights(self, weights, global_steps=None, **kwargs) -> None:
        self.calls.append(("update_weights", [name for name, _ in weights], global_steps))


class Rank:
    """A verl ``WorkerDict`` actor instance hosting the actor-rollout worker."""

    def __init__(self, adapter) -> None:
        self.worker_dict = {"actor_rollout": type("Worker", (), {"rollout": adapter})()}


def exported(pulled: list[str]):
    for index, shape in enumerate([(4, 4), (16,), (2, 3)]):
        pulled.append(f"t{index}")  # each tensor is an all-gather this rank takes part in
        yield f"t{index}", torch.zeros(shape)


def naive_update(adapter, pulled, version):
    """What verl's naive weight update does in one rank."""

    async def run():
        await adapter.resume(tags=["weights"])
        await adapter.update_weights(exported(pulled), global_steps=version)
        await adapter.resume(tags=["kv_cache"])

    asyncio.run(run())


def test_a_held_back_rank_neither_resumes_nor_loads_but_drains_every_tensor():
    adapter = Adapter(replica_rank=1)
    rank = Rank(adapter)
    assert restrict(rank, (0,)) == []
    pulled: list[str] = []
    naive_update(adapter, pulled, version=5)
    assert adapter.calls == []
    assert pulled == ["t0", "t1", "t2"]
    # Lifting the restriction reports what was held back, measured.
    (report,) = restrict(rank, None)
    assert report == SkippedSync(1, tensors=3, bytes=(16 + 16 + 6) * 4, largest=64, seconds=report.seconds)
    naive_update(adapter, pulled, version=6)
    assert adapter.calls == [
        ("resume", ("weights",)),
        ("update_weights", ["t0", "t1", "t2"], 6),
        ("resume", ("kv_cache",)),
    ]
    assert restrict(rank, None) == []  # nothing held back since


def test_an_allowed_rank_is_untouched_and_installing_twice_wraps_once():
    adapter = Adapter(replica_rank=0)
    rank = Rank(adapter)
    restrict(rank, (0, 2))
    restrict(rank, (0,))
    naive_update(adapter, [], version=1)
    assert [c[0] for c in adapter.calls] == ["resume", "update_weights", "resume"]


def test_ranks_that_cannot_be_gated_fail_at_install():
    with pytest.raises(LookupError, match="no rollout adapter"):
        restrict(object(), None)

    class NoRank(Adapter):
        replica_rank = None

        def __init__(self) -> None:
            self.calls = []

    with pytest.raises(TypeError, match="replica_rank"):
        restrict(Rank(NoRank()), None)


class Handle:
    """``actor.__ray_call__.remote(fn, *args)`` over a plain object."""

    def __init__(self, actor) -> None:
        self.__ray_call__ = type("Call", (), {"remote": staticmethod(lambda fn, *args: fn(actor, *args))})()


def test_filter_restricts_inside_the_block_and_reports_on_exit():
    adapters = [Adapter(0), Adapter(1)]
    sync = SyncFilter([Handle(Rank(a)) for a in adapters])
    sync.install()
    pulled: list[str] = []
    with sync.only([1]) as skipped:
        for adapter in adapters:
            naive_update(adapter, pulled, version=2)
        assert skipped == []
    assert [s.replica_rank for s in skipped] == [0] and skipped[0].tensors == 3
    assert adapters[0].calls == [] and len(adapters[1].calls) == 3
    # Outside the block verl's own updates reach every replica.
    naive_update(adapters[0], pulled, version=3)
    assert len(adapters[0].calls) == 3
