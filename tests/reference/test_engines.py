"""Generation engines and their ``rlix_resize_infer`` plugin, driven directly (no scheduler)."""

from __future__ import annotations

import pytest

from rlix_plugin import Hooks, get_plugin_manager, hookimpl
from rlix_plugin.reference.framework.engines import EnginePool, Job, PoolAborted
from rlix_plugin.reference.framework.policy import Trainer, WeightStore
from rlix_plugin.reference.harness.status import PipelineStatus

from .support import wait_until


class PreemptRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    @hookimpl
    def rlix_report_preempt(self, pipeline_id, dp_rank, retracted):
        self.calls.append((pipeline_id, dp_rank, retracted))


@pytest.fixture
def pool():
    trainer = Trainer(seed=5)
    store = WeightStore(trainer.model)
    status = PipelineStatus("p", rollouts=1, samples_per_rollout=4, dp_size=2)
    engines = EnginePool("p", [(0,), (1,)], store, status, seed=5, offset=2)
    pm = get_plugin_manager("noop", autoload=False)
    recorder = PreemptRecorder()
    pm.register(engines, name="engines")
    pm.register(recorder, name="preempts")
    engines.hooks = Hooks(pm)
    engines.test_trainer, engines.test_store, engines.test_status, engines.test_preempts = (
        trainer,
        store,
        status,
        recorder,
    )
    try:
        yield engines
    finally:
        engines.close()


def resize(pool, remove=(), add=(), pipeline="p"):
    return pool.hooks.resize_infer(pipeline_id=pipeline, dp_ranks_to_remove=tuple(remove), dp_ranks_to_add=tuple(add))


def test_answers_only_for_its_own_pipeline_and_is_idempotent_per_rank(pool):
    assert resize(pool, add=(0,), pipeline="someone-else") is None
    assert pool.awake_ranks() == ()
    assert resize(pool, add=(0, 1)) == (0, 1)
    assert resize(pool, add=(1,)) == (0, 1)  # a second wake changes nothing
    assert [e.wakes for e in pool.engines] == [1, 1]
    assert resize(pool, remove=(1,)) == (0,)
    assert resize(pool, remove=(1,)) == (0,)  # a second sleep changes nothing
    assert [e.sleeps for e in pool.engines] == [0, 1]
    assert pool.test_status.view().awake == 1


def test_sleep_drops_weights_and_wake_loads_the_latest_version(pool):
    resize(pool, add=(0,))
    assert pool.weight_versions() == {0: 0, 1: None}
    pool.test_store.publish(pool.test_trainer.model)
    resize(pool, add=(1,))
    assert pool.weight_versions() == {0: 0, 1: 1}  # rank 0 keeps its version until a sync
    assert pool.sync_weights() == 1
    assert pool.weight_versions() == {0: 1, 1: 1}
    resize(pool, remove=(0, 1))
    assert all(e.model is None and e.weight_version is None for e in pool.engines)


def test_bad_ranks_are_rejected_before_any_change(pool):
    with pytest.raises(ValueError, match=r"DP ranks \[2\] out of range 0..1"):
        resize(pool, add=(0, 2))
    assert pool.awake_ranks() == ()


def test_engines_generate_only_while_awake(pool):
    pool.submit([Job(0, i, prompt=i, seconds=0.001) for i in range(4)])
    with pytest.raises(TimeoutError, match=r"0/4 samples .*awake DP ranks \[\], busy \[\], queued 4"):
        pool.collect(4, timeout_s=0.2)
    resize(pool, add=(1,))
    samples = pool.collect(4, timeout_s=10)
    assert [s.index for s in samples] == [0, 1, 2, 3]
    assert {s.dp_rank for s in samples} == {1}
    assert all(0.0 <= s.reward <= 1.0 and s.weight_version == 0 for s in samples)


def test_sleep_retracts_the_in_flight_sample_reports_it_and_it_is_redispatched(pool):
    resize(pool, add=(0,))
    pool.submit([Job(0, 0, prompt=3, seconds=5.0)])  # long: certainly still in flight
    wait_until(lambda: pool.engines[0].current is not None, 5, "the sample to start")
    resize(pool, remove=(0,))
    assert pool.test_preempts.calls == [("p", 0, 1)]
    assert pool.test_status.view().retracted == 1
    # It resumes for its remaining time on the engine that picks it up: shorten it to finish.
    with pool._cond:
        job = pool._queue[0]
        assert job.index == 0 and job.seconds < 5.0
        pool._queue[0] = Job(0, 0, 3, 0.001)
    resize(pool, add=(1,))
    (sample,) = pool.collect(1, timeout_s=10)
    assert (sample.index, sample.dp_rank) == (0, 1)


def test_abort_wakes_a_collector(pool):
    pool.abort("stop")
    with pytest.raises(PoolAborted, match="stop"):
        pool.collect(1, timeout_s=10)


def test_same_sample_same_answer_whichever_engine_generates_it(pool):
    resize(pool, add=(0,))
    pool.submit([Job(0, i, prompt=i % 8, seconds=0.0) for i in range(6)])
    first = pool.collect(6, timeout_s=10)
    resize(pool, remove=(0,), add=(1,))
    pool.submit([Job(0, i, prompt=i % 8, seconds=0.0) for i in range(6)])
    second = pool.collect(6, timeout_s=10)
    assert [s.answer for s in first] == [s.answer for s in second]
    assert {s.dp_rank for s in first} == {0} and {s.dp_rank for s in second} == {1}


@pytest.fixture
def slow_pool():
    """Engines that take 0.3 s to wake or sleep and 0.3 s to sync weights."""
    from rlix_plugin.hookspecs import SwitchCosts

    trainer = Trainer(seed=5)
    store = WeightStore(trainer.model)
    status = PipelineStatus("p", rollouts=1, samples_per_rollout=4, dp_size=2)
    engines = EnginePool(
        "p",
        [(0,), (1,)],
        store,
        status,
        seed=5,
        offset=2,
        switch_costs=SwitchCosts(wake_seconds=0.3, sleep_seconds=0.3, sync_seconds=0.3),
    )
    pm = get_plugin_manager("noop", autoload=False)
    pm.register(engines, name="engines")
    engines.hooks = Hooks(pm)
    engines.test_status = status
    try:
        yield engines
    finally:
        engines.close()


def test_switching_engines_hold_their_gpus_generate_nothing_and_switch_in_parallel(slow_pool):
    import threading

    slow_pool.submit([Job(0, 0, 1, 0.0)])
    answers = {}
    calls = [threading.Thread(target=lambda r=r: answers.setdefault(r, resize(slow_pool, add=(r,)))) for r in (0, 1)]
    for call in calls:
        call.start()
    # Two calls for different ranks: both engines are waking at the same time.
    wait_until(lambda: [e.transition for e in slow_pool.engines] == ["waking", "waking"], 10, what="both waking")
    assert slow_pool.awake_ranks() == () and not slow_pool._results, "a waking engine serves nothing"
    for call in calls:
        call.join(10)
    assert set(answers[0]) | set(answers[1]) == {0, 1} and slow_pool.awake_ranks() == (0, 1)
    assert slow_pool.collect(1, timeout_s=10)[0].index == 0
    view = slow_pool.test_status.view()
    assert view.switches == 2 and view.switch_gpu_s == pytest.approx(0.6)


def test_a_weight_sync_pauses_awake_engines_and_retracts_their_work(slow_pool):
    import threading

    resize(slow_pool, add=(0,))
    slow_pool.submit([Job(0, 0, 1, 30.0)])  # long: still running when the sync starts
    wait_until(lambda: slow_pool.engines[0].current is not None, 10, what="engine 0 busy")
    sync = threading.Thread(target=slow_pool.sync_weights)
    sync.start()
    wait_until(lambda: slow_pool.engines[0].transition == "syncing", 10, what="syncing")
    assert slow_pool.engines[0].current is None and slow_pool.awake_ranks() == ()
    sync.join(10)
    assert slow_pool.awake_ranks() == (0,) and slow_pool.test_status.view().retracted == 1
