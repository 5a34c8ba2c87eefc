"""One RL pipeline's loop in virtual time: the reference framework's loop
(:mod:`rlix_plugin.reference.framework.pipeline`) with threads and waits replaced by events.

Per rollout: ``signal_demand`` -> ``begin`` -> the rollout's sequences queued on the pipeline's
awake engines (:mod:`.engines`) -> coalesced progress (at most one report per
``PROGRESS_INTERVAL_S``, the final count before ``end``) -> ``request_gpus(actor_train)`` ->
training (``train_seconds``, plus ``train_gpu_seconds_per_ktoken`` per 1,000 tokens the rollout
generated, over the training GPUs) -> weight sync into the awake engines -> ``release``. After its
last rollout the pipeline releases its generation cluster and unregisters. It starts
``start_delay_seconds`` late and, with ``stop_after_seconds``, is stopped that long after it
started: it unregisters at once, whatever it was doing (the scheduler frees what it held).
"""

from __future__ import annotations

from collections.abc import Callable

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, PipelineLimits, Priority
from rlix_plugin.scenario import PipelineConfig
from rlix_plugin.scenario.workload import sample_work

from .driver import SimulatedScheduler
from .engines import PipelineStats, SimEngines
from .events import EventLoop, Timer

#: The progress coalescer's minimum interval between two reports of one pipeline (seconds), as
#: in :mod:`rlix_plugin.progress`.
PROGRESS_INTERVAL_S = 0.05


class SimPipeline:
    """One pipeline's loop, event by event.

    :param on_rollout: ``on_rollout(n)`` when ``n`` of its rollouts are accounted for: 1 after
        each finished rollout, the ones it will never run when it is stopped (a progress display).
    """

    def __init__(
        self,
        loop: EventLoop,
        scheduler: SimulatedScheduler,
        config: PipelineConfig,
        on_rollout: Callable[[int], None] | None = None,
    ) -> None:
        self.loop = loop
        self.scheduler = scheduler
        self.config = config
        self.stats = PipelineStats(config.name)
        self.engines = SimEngines(loop, config, self.stats, self._sample_done)
        self.on_rollout = on_rollout
        #: GPUs training right now (read by the recorder).
        self.training_gpus = 0
        self._rollout = 0
        self._collected = 0
        self._work: list[float] = []
        self._report: Timer | None = None
        self._last_report = -1e9
        self._asked_at = 0.0
        self._train_started = 0.0
        self._stopped = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def done(self) -> bool:
        return self.stats.finished_at is not None

    def start(self) -> None:
        self.loop.after(self.config.start_delay_seconds, self._register)

    def _register(self) -> None:
        config = self.config
        clusters = {
            ACTOR_INFER: ClusterSpec(config.infer_tp, config.infer_gpus),
            ACTOR_TRAIN: ClusterSpec(1, config.train_gpus),
        }
        self.stats.started_at = self.loop.now()
        # As a framework integration would: each engine runs up to its batch of samples at once.
        limits = PipelineLimits(samples_per_engine=self.engines.batch)
        self.scheduler.register(self.name, clusters, self.engines, config.switch_costs, limits)
        if config.stop_after_seconds is not None:
            self.loop.after(config.stop_after_seconds, self._stop)
        self._next_rollout()

    def _next_rollout(self) -> None:
        if self._rollout == self.config.rollouts:
            self.scheduler.release(self.name, ACTOR_INFER, self._finished)
            return
        self._asked_at = self.loop.now()
        self.scheduler.signal_demand(self.name, self.config.samples_per_rollout, self._generate)

    def _generate(self) -> None:
        if self._stopped:
            return
        self.stats.waits.append(self.loop.now() - self._asked_at)
        self._collected = 0
        target = self.config.samples_per_rollout
        self.scheduler.report_progress(self.name, target, 0, new_batch=True)
        self._last_report = self.loop.now()
        self._work = sample_work(self.config, self._rollout)
        self.engines.submit(self._work)

    def _sample_done(self, index: int) -> None:
        del index  # which sample does not matter here, only how many
        self._collected += 1
        target = self.config.samples_per_rollout
        if self._collected >= target:
            if self._report is not None:
                self._report.cancel()
                self._report = None
            self.scheduler.report_progress(self.name, target, target, new_batch=False)
            self.scheduler.end_progress(self.name)
            self._train()
            return
        if self._report is None:
            self._report = self.loop.at(self._last_report + PROGRESS_INTERVAL_S, self._send_report)

    def _send_report(self) -> None:
        self._report = None
        if self._stopped:
            return
        self._last_report = self.loop.now()
        self.scheduler.report_progress(self.name, self.config.samples_per_rollout, self._collected, new_batch=False)

    def _train(self) -> None:
        self._asked_at = self.loop.now()
        self.scheduler.request(self.name, ACTOR_TRAIN, Priority.ACTOR_TRAINING, None, self._training)

    def _training(self) -> None:
        if self._stopped:
            return
        self.stats.waits.append(self.loop.now() - self._asked_at)
        config = self.config
        seconds = config.train_seconds_for(sum(self._work)) if config.token_workload else config.train_seconds
        self.training_gpus = len(config.train_gpus)
        self._train_started = self.loop.now()
        self.loop.after(seconds, self._train_done)

    def _count_training(self) -> None:
        gpu_s = (self.loop.now() - self._train_started) * self.training_gpus
        self.stats.busy_gpu_s += gpu_s
        self.stats.useful_gpu_s += gpu_s
        self.training_gpus = 0

    def _train_done(self) -> None:
        if self._stopped:
            return
        self._count_training()
        self.engines.sync(self._trained)

    def _trained(self) -> None:
        if self._stopped:
            return
        self.scheduler.release(self.name, ACTOR_TRAIN)
        self.stats.rollouts_completed += 1
        self._rollout += 1
        if self.on_rollout is not None:
            self.on_rollout(1)
        self._next_rollout()

    def _finished(self) -> None:
        if self._stopped:
            return
        self.stats.finished_at = self.loop.now()
        self.scheduler.unregister(self.name)

    def _stop(self) -> None:
        if self.done:
            return
        self._stopped = True
        if self._report is not None:
            self._report.cancel()
            self._report = None
        self._count_training()  # the part of a training step it was in
        self.engines.stop()
        self.stats.stopped = True
        self.stats.finished_at = self.loop.now()
        self.scheduler.unregister(self.name)
        if self.on_rollout is not None:
            self.on_rollout(self.config.rollouts - self.stats.rollouts_completed)


__all__ = ["PROGRESS_INTERVAL_S", "SimPipeline"]
