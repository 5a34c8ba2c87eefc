"""Failure mode 2 of the seed: a framework whose engine hooks were never installed. With the
reference pipeline the first wake fails loudly (the pipeline is fenced with the cause) instead of
the run hanging with no demand ever served."""

from __future__ import annotations

import threading

from rlix_plugin import Hooks, get_plugin_manager
from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.reference.framework.engines import EnginePool
from rlix_plugin.reference.framework.observer import FAILED
from rlix_plugin.reference.framework.pipeline import ReferencePipeline
from rlix_plugin.reference.framework.policy import Trainer, WeightStore

from .support import tiny_scenario


def test_a_pipeline_without_engine_hooks_fails_fast_with_the_cause():
    config = tiny_scenario().pipelines[0]
    scheduler = LocalScheduler(2, 2, resize_timeout_s=5.0)
    trainer = Trainer(config.seed)
    store = WeightStore(trainer.model)
    pool = EnginePool(config.name, config.bundles(), store, seed=config.seed, offset=1)
    try:
        pm = get_plugin_manager("local", backend_options={"scheduler": scheduler}, autoload=False)
        hooks = Hooks(pm)  # the engine pool is *not* registered on the manager
        pipeline = ReferencePipeline(
            config, hooks, pool, trainer, store, abort=threading.Event(), wait_timeout_s=10.0
        )  # no observer: the framework runs on its own
        thread = threading.Thread(target=pipeline.run)
        thread.start()
        thread.join(15.0)
        assert not thread.is_alive()
        assert pipeline.outcome == FAILED and not pipeline.samples
        assert "the framework's hooks were never installed" in str(pipeline.error)
        assert config.name not in scheduler.snapshot()["pipelines"]  # unregistered in its finally
    finally:
        pool.close()
        scheduler.close()
