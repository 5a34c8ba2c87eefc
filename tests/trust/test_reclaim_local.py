"""A hung pipeline cannot wedge the pool past its grace (local backend): its resize times out, it
is fenced, and once the grace is over its GPUs go back to the pool and a neighbour's training
request that waited on them is granted."""

from __future__ import annotations

import threading
import time

import pytest

from rlix_plugin import hookimpl
from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.hookspecs import ACTOR_TRAIN, PipelineGoneError, Priority
from rlix_plugin.scheduler.planner import ANTICIPATION_S

from ..waiting import wait_until
from .support import Engines, hooks_on, seed_clusters


class StuckEngines(Engines):
    """Wakes at once; a sleep hangs until released (an engine wedged in release_memory)."""

    def __init__(self, pipeline_id: str) -> None:
        super().__init__(pipeline_id)
        self.release = threading.Event()

    @hookimpl
    def rlix_resize_infer(self, pipeline_id, dp_ranks_to_remove, dp_ranks_to_add):
        if pipeline_id != self.pipeline_id:
            return None
        if dp_ranks_to_remove:
            self.release.wait(60)
        return super().rlix_resize_infer(pipeline_id, dp_ranks_to_remove, dp_ranks_to_add)


def test_a_hung_pipeline_is_fenced_then_reclaimed_and_the_pool_moves_on():
    scheduler = LocalScheduler(4, 4, resize_timeout_s=0.5, fence_grace_s=1.0, policy="gap_ratio")
    stuck = StuckEngines("stuck")
    sick = hooks_on("local", {"scheduler": scheduler}, stuck)
    healthy = hooks_on("local", {"scheduler": scheduler}, Engines("healthy"))
    try:
        sick.register_pipeline(pipeline_id="stuck", clusters=seed_clusters((0, 1)))
        healthy.register_pipeline(pipeline_id="healthy", clusters=seed_clusters((2, 3)))
        assert sick.signal_demand(pipeline_id="stuck", rollout_id=0, step_target=8, timeout_s=5).dp_ranks == (
            0,
            1,
            2,
            3,
        )
        # healthy's training needs GPUs 2-3: stuck's engines there must sleep, and their sleep hangs.
        grant = healthy.request_gpus(
            pipeline_id="healthy", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=30
        )
        assert grant.gpus == (2, 3), "granted once the grace ran out and the GPUs were reclaimed"
        snap = scheduler.snapshot()
        assert "stuck" not in snap["pipelines"]
        assert "reclaimed 1s after it was fenced" in snap["reclaimed"]["stuck"]
        assert "resize took longer than 0.5s" in snap["reclaimed"]["stuck"]
        with pytest.raises(PipelineGoneError, match="'stuck' was reclaimed 1s after it was fenced"):
            sick.signal_demand(pipeline_id="stuck", rollout_id=1, step_target=8, timeout_s=1)
        wait_until(lambda: scheduler.snapshot()["idle_gpus"] == [0, 1], 10, "stuck's other GPUs back in the pool")
    finally:
        stuck.release.set()
        for hooks in (sick, healthy):
            hooks.plugin_manager.backend.close()
        scheduler.close()


def test_a_pipeline_that_unregisters_within_its_grace_is_not_reclaimed():
    scheduler = LocalScheduler(4, 4, resize_timeout_s=0.3, fence_grace_s=30.0, policy="gap_ratio")
    stuck = StuckEngines("stuck")
    sick = hooks_on("local", {"scheduler": scheduler}, stuck)
    healthy = hooks_on("local", {"scheduler": scheduler}, Engines("healthy"))
    try:
        sick.register_pipeline(pipeline_id="stuck", clusters=seed_clusters((0, 1)))
        healthy.register_pipeline(pipeline_id="healthy", clusters=seed_clusters((2, 3)))
        sick.signal_demand(pipeline_id="stuck", rollout_id=0, step_target=8, timeout_s=5)
        waiter = threading.Thread(
            target=lambda: healthy.request_gpus(
                pipeline_id="healthy", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=30
            ),
            daemon=True,
        )
        waiter.start()
        wait_until(lambda: scheduler.snapshot()["pipelines"]["stuck"]["fenced"], 10, "stuck fenced")
        with pytest.raises(PipelineGoneError, match="fenced"):
            sick.signal_demand(pipeline_id="stuck", rollout_id=1, step_target=8, timeout_s=1)
        sick.unregister_pipeline(pipeline_id="stuck", reason="its finally")  # the framework cleans up
        waiter.join(10)
        assert not waiter.is_alive()
        assert scheduler.snapshot()["reclaimed"] == {}, "it left on its own"
    finally:
        stuck.release.set()
        for hooks in (sick, healthy):
            hooks.plugin_manager.backend.close()
        scheduler.close()


@pytest.mark.parametrize("policy", ["gap_ratio", "finish_first"])
def test_idle_engines_of_a_finished_rollout_go_to_a_pipeline_that_still_has_work(policy):
    scheduler = LocalScheduler(4, 4, policy=policy)
    engines = {p: Engines(p) for p in ("done", "busy")}
    hooks = {p: hooks_on("local", {"scheduler": scheduler}, engines[p]) for p in engines}
    try:
        for pid, train in (("done", (0, 1)), ("busy", (2, 3))):
            hooks[pid].register_pipeline(pipeline_id=pid, clusters=seed_clusters(train))
            hooks[pid].signal_demand(pipeline_id=pid, rollout_id=0, step_target=64, timeout_s=10)
            hooks[pid].begin_progress_batch(pipeline_id=pid, rollout_id=0, step_target=64)
        wait_until(lambda: engines["done"].awake and engines["busy"].awake, 10, "both generating")
        hooks["done"].bump_completed(pipeline_id="done", rollout_id=0, count=64)
        hooks["done"].end_progress_batch(pipeline_id="done", rollout_id=0)  # its rollout is over; it keeps its engines
        # No request, no release: only busy's progress. A first sample at once (the rate looks
        # high: moving engines would not pay), then nothing while done's anticipation window runs
        # out (the pass at its end keeps the engines where they are), then a sample every 50 ms:
        # the rate is measured again and the idle engines must move, long before busy's rollout ends.
        hooks["busy"].bump_completed(pipeline_id="busy", rollout_id=0, count=1)
        ended = time.monotonic()
        completed = 1

        def busy_progresses_and_has_every_gpu() -> bool:
            nonlocal completed
            if engines["busy"].awake == {0, 1, 2, 3}:
                return True
            if time.monotonic() - ended < ANTICIPATION_S + 0.5:
                return False
            assert completed < 60, "busy's rollout nearly ended on part of the pool"
            completed += 1
            hooks["busy"].bump_completed(pipeline_id="busy", rollout_id=0, count=1)
            return False

        wait_until(busy_progresses_and_has_every_gpu, 10, "busy woken on every GPU", interval_s=0.05)
        assert engines["done"].awake == set()
    finally:
        for each in hooks.values():
            each.plugin_manager.backend.close()
        scheduler.close()


@pytest.mark.parametrize("policy", ["gap_ratio", "finish_first"])
def test_a_pipeline_whose_mapping_reaches_only_a_peers_engines_still_gets_one(policy):
    """p4 trains on GPUs 0-1 while its engines run on 2-3 (it has demand, and its target is the two
    bundles it holds); p5 can generate only on 0-3. p5 must get one of p4's two engines: every
    pipeline with demand gets a worker as soon as one can be freed."""
    scheduler = LocalScheduler(8, 4, policy=policy)
    engines = {p: Engines(p) for p in ("p4", "p5")}
    hooks = {p: hooks_on("local", {"scheduler": scheduler}, engines[p]) for p in engines}
    try:
        hooks["p4"].register_pipeline(pipeline_id="p4", clusters=seed_clusters((0, 1)))
        hooks["p4"].signal_demand(pipeline_id="p4", rollout_id=0, step_target=16, timeout_s=10)
        hooks["p4"].request_gpus(pipeline_id="p4", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=10)
        assert engines["p4"].awake == {2, 3}
        hooks["p5"].register_pipeline(pipeline_id="p5", clusters=seed_clusters((2, 3)))
        grant = hooks["p5"].signal_demand(pipeline_id="p5", rollout_id=0, step_target=4, timeout_s=10)
        assert len(grant.dp_ranks) == 1 and engines["p5"].awake == set(grant.dp_ranks) <= {2, 3}
        assert len(engines["p4"].awake) == 1, "p4 keeps one worker"
    finally:
        for each in hooks.values():
            each.plugin_manager.backend.close()
        scheduler.close()
