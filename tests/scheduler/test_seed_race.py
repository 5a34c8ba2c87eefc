"""The seed race as a regression test (reference/000_9c051a64d10f0476.txt).

Two pipelines on 4 GPUs: P1 trains on [0, 1], P2 on [2, 3], both generate on [0..3], tp 1. Both
train at once, which preempts every rollout worker of both; then both start their next rollout.

* Fixed semantics (durable open-demand registry + ``signal_demand`` before the rollout): both must
  get at least one worker and both complete 5 rollouts.
* Pre-fix semantics, kept here only as a negative control: the planner sees generation demand only
  while a request sits in the pending queue (or through progress of a pipeline that still has an
  awake worker), and the rollout does not pre-signal: it opens its progress batch and waits for an
  engine, as the old rollout function did. Then a pipeline left with no worker (preempted by
  training, or outbid by the peer whose request was planned first while its own demand was not
  visible) is never woken again: it stalls. The test shows that at least one pipeline starves, so that it proves the fix
  matters: a test that passed under both semantics would prove nothing.
"""

from __future__ import annotations

import asyncio

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, Priority
from rlix_plugin.scheduler.service import SchedulerService
from rlix_plugin.scheduler.topology import PoolTopology

from .support import AsOwners, FakeEngines, end, progress, run, seed_clusters

ROLLOUTS, SAMPLES = 5, 6
STALL_S = 1.5  # no awake engine for this long = the pipeline is stalled ("No progress for 30.0s")


class Stalled(Exception):
    pass


async def rollout_pipeline(service, engines, pid, barrier, pre_signal: bool) -> int:
    """One miles-shaped pipeline: rollout -> train (all trained at once) -> next rollout."""
    try:
        return await _rollouts(service, engines, pid, barrier, pre_signal)
    except BaseException:
        await barrier.abort()  # the peer must not wait at the training barrier for a stalled pipeline
        raise


async def _rollouts(service, engines, pid, barrier, pre_signal: bool) -> int:
    completed = 0
    for rollout in range(ROLLOUTS):
        if pre_signal:
            await service.signal_demand(pid, rollout, SAMPLES, timeout_s=STALL_S)
        service.apply_progress(progress(pid, SAMPLES, 0, rollout_id=rollout, begin=True))
        for sample in range(SAMPLES):
            deadline = asyncio.get_running_loop().time() + STALL_S
            while not engines.awake.get(pid):  # dispatch needs an awake engine
                if asyncio.get_running_loop().time() > deadline:
                    raise Stalled(f"{pid} rollout {rollout}: no engine awake for {STALL_S}s, {sample}/{SAMPLES}")
                engines.changed.clear()
                try:
                    await asyncio.wait_for(engines.changed.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
            await asyncio.sleep(0)
            service.apply_progress(progress(pid, SAMPLES, sample + 1, rollout_id=rollout))
        service.apply_progress(end(pid, rollout_id=rollout))
        completed += 1
        # Both pipelines train together: every rollout worker of both is preempted.
        await barrier.wait()
        await service.request_gpus(pid, ACTOR_TRAIN, Priority.ACTOR_TRAINING, None, timeout_s=5)
        await barrier.wait()
        await service.release(pid, ACTOR_TRAIN)
    return completed


async def seed_run(durable_demand: bool, pre_signal: bool) -> dict[str, object]:
    engines = FakeEngines()
    service = AsOwners(SchedulerService(PoolTopology(4, 4), durable_demand=durable_demand))
    await service.start()
    for pid, train in (("p1", (0, 1)), ("p2", (2, 3))):
        await service.register_pipeline(pid, seed_clusters(train), engines.resize)
    # Init, as the old pipeline did: request the generation cluster once.
    for pid in ("p1", "p2"):
        await service.request_gpus(pid, ACTOR_INFER, Priority.GENERATION, SAMPLES, timeout_s=5)
    barrier = asyncio.Barrier(2)
    results = await asyncio.gather(
        *(rollout_pipeline(service, engines, pid, barrier, pre_signal) for pid in ("p1", "p2")),
        return_exceptions=True,
    )
    await service.stop()
    return dict(zip(("p1", "p2"), results, strict=False))


def test_fixed_semantics_both_pipelines_complete_five_rollouts():
    outcome = run(seed_run(durable_demand=True, pre_signal=True), timeout_s=30)
    assert outcome == {"p1": ROLLOUTS, "p2": ROLLOUTS}


def test_pre_fix_semantics_starve_a_pipeline():
    outcome = run(seed_run(durable_demand=False, pre_signal=False), timeout_s=30)
    starved = {pid: str(result) for pid, result in outcome.items() if isinstance(result, Stalled)}
    assert starved, f"the pre-fix semantics should starve a pipeline, got {outcome}"
    assert all("no engine awake" in why for why in starved.values()), starved
