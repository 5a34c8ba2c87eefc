"""Per-group progress in the worker (no Ray) and the session's unit and ordering rules."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec
from rlix_plugin.integrations.verl.progress import GroupProgressMixin
from rlix_plugin.integrations.verl.session import VerlSession

from .fakes import FakeWorkerBase


class Worker(GroupProgressMixin, FakeWorkerBase):
    pass


def test_finished_training_groups_count_their_samples():
    async def scenario():
        worker = Worker(n=4)
        await worker.run_group("a")  # 4 samples
        await worker.run_group("b", n=3)  # a per-prompt n overrides rollout.n
        await worker.run_group("v", validate=True)  # validation: not rollout progress
        await worker.run_group("f", fail=True)  # a session raised: the group is not counted
        first = await worker.rlix_take_completed(0.0)
        second = await worker.rlix_take_completed(0.0)
        return first, second, worker._rlix_failed_uids

    first, second, failed = asyncio.run(scenario())
    assert (first, second) == (7, 0)
    assert failed == set()  # the failure marker does not leak past its group


def test_take_waits_for_a_group_then_returns_promptly():
    async def scenario():
        worker = Worker(n=2)
        waiting = asyncio.create_task(worker.rlix_take_completed(30.0))
        await asyncio.sleep(0)  # one cooperative yield: the poll is now parked on its event
        parked = not waiting.done()
        await worker.run_group("a")
        count = await asyncio.wait_for(waiting, 5.0)
        empty = await worker.rlix_take_completed(0.01)  # nothing new: times out with 0
        return parked, count, empty

    assert asyncio.run(scenario()) == (True, 2, 0)


def make_session(hooks):
    return VerlSession(
        hooks,
        pipeline_id="p1",
        clusters={ACTOR_INFER: ClusterSpec(1, (0, 1)), ACTOR_TRAIN: ClusterSpec(2, (0, 1))},
        timeout_s=5.0,
        samples_per_step=8,
    )


def test_bumps_outside_a_batch_are_dropped(rlix_hooks, rlix_recorder):
    session = make_session(rlix_hooks)
    session.groups_completed(2)  # a straggler before any batch
    session.rollout_submitted(samples=8, weight_version=3)
    session.groups_completed(2)
    session.end_rollout()
    session.groups_completed(2)  # a straggler after the end
    session.end_rollout()  # idempotent
    assert rlix_recorder.names() == ["rlix_begin_progress_batch", "rlix_bump_completed", "rlix_end_progress_batch"]
    assert rlix_recorder.getcall("bump_completed").target_weight_version == 3
    assert session.progress == (2, 8)


def test_close_runs_every_step_even_when_one_fails(rlix_hooks, rlix_register, rlix_recorder, caplog):
    from rlix_plugin import hookimpl

    class BrokenRelease:
        @hookimpl
        def rlix_release(self, pipeline_id, cluster):
            raise ConnectionError("scheduler gone")

    rlix_register(BrokenRelease())
    session = make_session(rlix_hooks)
    session.register()
    session.rollout_submitted(samples=8, weight_version=0)
    error = session.close("finished")
    assert isinstance(error, ConnectionError)
    assert rlix_recorder.names()[-4:] == [
        "rlix_end_progress_batch",
        "rlix_release",
        "rlix_release",
        "rlix_unregister_pipeline",
    ]
    assert "could not release actor_infer" in caplog.text
    assert session.close("again") is None and not session.registered


def test_session_rejects_a_zero_target(rlix_hooks):
    with pytest.raises(ValueError):
        VerlSession(rlix_hooks, pipeline_id="p", clusters={}, timeout_s=1.0, samples_per_step=0)
