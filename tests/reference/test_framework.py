"""The copyable framework on its own (no harness): its engines are a ``PipelineEngines`` and it
reports through the ``PipelineObserver`` protocol, in the documented order."""

from __future__ import annotations

import threading

from rlix_plugin import Hooks, get_plugin_manager
from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.reference.framework import observer as ob
from rlix_plugin.reference.framework.engines import EnginePool
from rlix_plugin.reference.framework.pipeline import ReferencePipeline
from rlix_plugin.reference.framework.policy import Trainer, WeightStore
from rlix_plugin.supply import PipelineEngines

from .support import tiny_scenario


class Reports(ob.NullObserver):
    """Keeps the pipeline's phases, demand and outcome in the order reported."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.awake: list[tuple[int, ...]] = []
        self.samples = 0
        self._lock = threading.Lock()

    def phase(self, phase: str, rollout: int) -> None:
        self.events.append((phase, rollout))

    def demand(self, open_: bool) -> None:
        self.events.append(("demand", open_))

    def engines(self, awake: tuple[int, ...]) -> None:
        with self._lock:
            self.awake.append(awake)

    def sample_done(self) -> None:
        with self._lock:
            self.samples += 1

    def rollout_done(self, rollout: int, mean_reward: float, weight_version: int) -> None:
        self.events.append(("rollout done", rollout, weight_version))

    def finished(self, phase: str, error: str | None) -> None:
        self.events.append(("finished", phase, error))


def test_a_pipeline_reports_its_rollouts_to_its_observer_in_order():
    config = tiny_scenario(rollouts=2, samples=4).pipelines[0]
    scheduler = LocalScheduler(2, 2, resize_timeout_s=5.0)
    reports = Reports()
    trainer = Trainer(config.seed)
    store = WeightStore(trainer.model)
    pool = EnginePool(config.name, config.bundles(), store, reports, seed=config.seed, offset=1)
    assert isinstance(pool, PipelineEngines) and pool.concurrent_resizes
    try:
        pm = get_plugin_manager("local", backend_options={"scheduler": scheduler}, autoload=False)
        pm.register(pool, name="engines")
        pool.hooks = hooks = Hooks(pm)
        pipeline = ReferencePipeline(
            config, hooks, pool, trainer, store, reports, abort=threading.Event(), time_scale=0.25, wait_timeout_s=10.0
        )
        thread = threading.Thread(target=pipeline.run)
        thread.start()
        thread.join(30.0)
        assert not thread.is_alive()
    finally:
        pool.close()
        scheduler.close()
    per_rollout = [
        [
            (ob.WAITING_ENGINES, k),
            ("demand", True),
            (ob.GENERATING, k),
            ("demand", False),
            (ob.WAITING_TRAIN, k),
            (ob.TRAINING, k),
            (ob.TRAINED, k),
            ("rollout done", k, k + 1),
        ]
        for k in range(config.rollouts)
    ]
    assert reports.events == [*per_rollout[0], *per_rollout[1], ("finished", ob.DONE, None)]
    assert pipeline.outcome == ob.DONE and pipeline.error is None
    assert reports.samples == config.rollouts * config.samples_per_rollout
    assert reports.awake and reports.awake[-1] == ()  # released at the end: every engine asleep
