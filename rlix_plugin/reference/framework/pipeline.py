"""The RL loop of one reference pipeline, integrated with the scheduler only through the hooks.

Per rollout ``k`` (the order a framework integration must follow)::

    signal_demand(k, step_target=N)      # durable open demand; blocks until >= 1 engine is awake
    begin_progress_batch(N)
    dispatch N samples to the awake engines; bump_completed once per finished sample
    end_progress_batch()
    request_gpus(actor_train, ACTOR_TRAINING)     # preempts generation engines on those GPUs
    try: one gradient step, publish weights (CPU copy), sync them into awake engines
    finally: release(actor_train)

and, whatever happens, ``release(actor_infer)`` and ``unregister_pipeline`` in a ``finally``.

``legacy_demand=True`` reproduces how frameworks signalled demand before the seed fix (tests
only): the generation cluster is requested once, before the first rollout, the way a framework
that keeps its engines alive between rollouts did; after that each rollout only does
``begin_progress_batch`` -> dispatch, with no pre-signal. Together with a scheduler built with
``durable_demand=False`` this is the race the seed document describes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rlix_plugin.frontend import Hooks
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, Priority
from rlix_plugin.scenario import PipelineConfig
from rlix_plugin.scenario.workload import sample_durations
from rlix_plugin.session import PipelineSession

from .engines import EnginePool, Job, PoolAborted
from .observer import (
    ABORTED,
    DONE,
    FAILED,
    GENERATING,
    STARTING,
    TRAINED,
    TRAINING,
    WAITING_ENGINES,
    WAITING_TRAIN,
    NullObserver,
    PipelineObserver,
)
from .policy import Sample, Trainer, WeightStore
from .task import prompts

log = logging.getLogger(__name__)


class RunAborted(RuntimeError):
    """The runner stopped the run (watchdog, timeout or another pipeline's failure)."""


class ReferencePipeline:
    """One pipeline: its config, hooks, engines and trainer; it reports to ``observer``.

    :param observer: Receives the pipeline's phases and progress (the pool's engines report to
        the same one); :class:`~.observer.NullObserver` when None.
    :param time_scale: Multiplies every scenario duration (tests run the same scenario faster).
    :param wait_timeout_s: Timeout of each blocking scheduler call and of collecting a rollout.
    :param abort: Set by the runner to stop the run; every wait here also watches it.
    """

    def __init__(
        self,
        config: PipelineConfig,
        hooks: Hooks,
        pool: EnginePool,
        trainer: Trainer,
        store: WeightStore,
        observer: PipelineObserver | None = None,
        *,
        abort: threading.Event,
        time_scale: float = 1.0,
        wait_timeout_s: float = 300.0,
        legacy_demand: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.hooks = hooks
        self.pool = pool
        self.trainer = trainer
        self.store = store
        self.observer = observer if observer is not None else NullObserver()
        self.abort = abort
        self.time_scale = time_scale
        self.wait_timeout_s = wait_timeout_s
        self.legacy_demand = legacy_demand
        self.clock = clock
        self.session = PipelineSession(
            hooks,
            pipeline_id=config.name,
            clusters=self._clusters(),
            timeout_s=wait_timeout_s,
            switch_costs=pool.switch_costs,
        )
        self.error: BaseException | None = None
        #: The phase the pipeline ended in (one of ``FINAL_PHASES``), once it has.
        self.outcome = STARTING
        #: Samples of every finished rollout, for tests and metrics (rollout -> samples).
        self.samples: dict[int, list[Sample]] = {}

    @property
    def name(self) -> str:
        return self.config.name

    # -- the thread -------------------------------------------------------------------------------

    def run(self) -> None:
        """Thread target. Never raises: the outcome is in ``outcome`` and ``error``."""
        try:
            if self.abort.wait(self.config.start_delay_seconds * self.time_scale):
                raise RunAborted("aborted before start")
            self.session.register()
            try:
                if self.legacy_demand:
                    self._legacy_request()
                for rollout in range(self.config.rollouts):
                    samples = self._rollout(rollout)
                    self._train(rollout, samples)
            finally:
                self._release(ACTOR_INFER)  # sleeps every engine and retires the open demand
            self._finish(DONE)
        except (RunAborted, PoolAborted) as exc:
            self._finish(ABORTED, str(exc))
        except BaseException as exc:  # reported by the runner; the thread must not die silently
            self.error = exc
            self._finish(ABORTED if self.abort.is_set() else FAILED, f"{type(exc).__name__}: {exc}")
            if not self.abort.is_set():
                log.error("pipeline %s failed: %r", self.name, exc)
        finally:
            self.session.close(reason=self.outcome)  # releases what is left, unregisters

    # -- steps ------------------------------------------------------------------------------------

    def _clusters(self) -> dict[str, ClusterSpec]:
        return {
            ACTOR_INFER: ClusterSpec(tp_size=self.config.infer_tp, gpus=self.config.infer_gpus),
            ACTOR_TRAIN: ClusterSpec(tp_size=1, gpus=self.config.train_gpus),
        }

    def _legacy_request(self) -> None:
        """Pre-fix behaviour: request the generation cluster once and keep it (tests only)."""
        self.observer.phase(WAITING_ENGINES, 0)
        self.observer.demand(True)
        started = self.clock()
        try:
            self.hooks.request_gpus(
                pipeline_id=self.name,
                cluster=ACTOR_INFER,
                priority=Priority.GENERATION,
                step_target=self.config.samples_per_rollout,
                timeout_s=self.wait_timeout_s,
            )
        finally:
            self.observer.waited(self.clock() - started)

    def _rollout(self, rollout: int) -> list[Sample]:
        target = self.config.samples_per_rollout
        version, _ = self.store.latest()
        jobs = [
            Job(rollout, index, prompt, seconds * self.time_scale)
            for index, (prompt, seconds) in enumerate(
                zip(prompts(self.config.seed, rollout, target), sample_durations(self.config, rollout), strict=False)
            )
        ]
        self.observer.phase(WAITING_ENGINES, rollout)
        self.observer.demand(True)
        try:
            if not self.legacy_demand:
                started = self.clock()
                try:
                    self.session.signal_demand(rollout, target)
                finally:
                    self.observer.waited(self.clock() - started)
            self._check_abort()
            self.hooks.begin_progress_batch(
                pipeline_id=self.name, rollout_id=rollout, step_target=target, target_weight_version=version
            )
            try:
                self.observer.phase(GENERATING, rollout)
                self.pool.submit(jobs)
                samples = self.pool.collect(target, self.wait_timeout_s)
            finally:
                self.hooks.end_progress_batch(pipeline_id=self.name, rollout_id=rollout)
        finally:
            self.observer.demand(False)
        self.samples[rollout] = samples
        return samples

    def _train(self, rollout: int, samples: list[Sample]) -> None:
        self.observer.phase(WAITING_TRAIN, rollout)
        started = self.clock()
        try:
            self.session.acquire(ACTOR_TRAIN, Priority.ACTOR_TRAINING)
        finally:
            self.observer.waited(self.clock() - started)
        try:
            self.observer.phase(TRAINING, rollout)
            began = self.clock()
            self.trainer.step(samples)
            # The tiny policy trains in milliseconds; hold the GPUs for the scenario's training
            # time so that the schedule has the shape of a real run.
            held = self.config.train_seconds * self.time_scale
            if self.abort.wait(max(0.0, held - (self.clock() - began))):
                raise RunAborted("aborted during training")
            version = self.store.publish(self.trainer.model)
            self.pool.sync_weights()
            self.observer.busy(held * len(self.config.train_gpus))
        finally:
            self.observer.phase(TRAINED, rollout)  # done with the training GPUs before they are given back
            self._release(ACTOR_TRAIN)
        self.observer.rollout_done(rollout, sum(s.reward for s in samples) / len(samples), version)

    # -- helpers ----------------------------------------------------------------------------------

    def _release(self, cluster: str) -> None:
        try:
            self.session.release(cluster)
        except Exception as exc:
            if not self.abort.is_set():
                raise
            log.debug("pipeline %s: release of %s during abort: %r", self.name, cluster, exc)

    def _check_abort(self) -> None:
        if self.abort.is_set():
            raise RunAborted("run aborted")

    def _finish(self, phase: str, error: str | None = None) -> None:
        self.outcome = phase
        self.observer.finished(phase, error)


__all__ = ["ReferencePipeline", "RunAborted"]
