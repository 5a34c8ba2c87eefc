"""The reference framework in virtual time: the same pipelines, engines and loop as
:mod:`rlix_plugin.reference`, with threads and waits replaced by events.

What is modelled is exactly what the live reference framework does (and what calibration checks):

* per rollout: ``signal_demand`` -> ``begin`` -> samples dispatched in index order to awake
  engines, one at a time per engine, each for its drawn duration -> coalesced progress (at most
  one report per ``PROGRESS_INTERVAL_S``, the final count before ``end``) -> ``request_gpus
  (actor_train)`` -> ``train_seconds`` -> weight sync into the awake engines -> ``release``;
* an engine waking, falling asleep or syncing holds its GPUs and generates nothing for the
  pipeline's ``wake_seconds`` / ``sleep_seconds`` / ``sync_seconds``; a sleep or a sync first
  retracts the engine's in-flight sample, which keeps its progress and resumes first in the queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, Priority
from rlix_plugin.reference.scenario import PipelineConfig, Scenario
from rlix_plugin.reference.workload import sample_durations
from rlix_plugin.scheduler.state import ResizeAction, ResizeOutcome

from .driver import SimulatedScheduler
from .events import EventLoop, Timer

#: The progress coalescer's minimum interval between two reports of one pipeline (seconds).
PROGRESS_INTERVAL_S = 0.05

ASLEEP, WAKING, AWAKE, FALLING_ASLEEP, SYNCING = "asleep", "waking", "awake", "falling asleep", "syncing"


@dataclass
class PipelineStats:
    """What a simulated pipeline did."""

    name: str
    finished_at: float | None = None
    rollouts_completed: int = 0
    busy_gpu_s: float = 0.0
    switches: int = 0
    switch_gpu_s: float = 0.0
    retracted: int = 0
    waits: list[float] = field(default_factory=list)


class _Job:
    __slots__ = ("index", "left")

    def __init__(self, index: int, left: float) -> None:
        self.index = index
        self.left = left


class SimEngines:
    """The generation engines of one simulated pipeline (the supply side)."""

    def __init__(self, loop: EventLoop, config: PipelineConfig, stats: PipelineStats,
                 on_sample: Callable[[], None]) -> None:
        self.loop = loop
        self.config = config
        self.stats = stats
        self.on_sample = on_sample
        self.tp = config.infer_tp
        self.state = [ASLEEP] * config.dp_size
        self.queue: deque[_Job] = deque()
        #: rank -> (job, started at, finish timer)
        self.running: dict[int, tuple[_Job, float, Timer]] = {}
        #: rank -> callbacks waiting for that engine's sync to end
        self._after_sync: dict[int, list[Callable[[], None]]] = {}

    # -- supply side ----------------------------------------------------------------------------------

    def resize(self, action: ResizeAction, done: Callable[[ResizeOutcome], None]) -> None:
        if action.remove:
            self._sleep(list(action.remove), done)
        else:
            self._wake(list(action.add), done)

    def _outcome(self) -> ResizeOutcome:
        return ResizeOutcome(tuple(r for r, s in enumerate(self.state) if s in (AWAKE, SYNCING)))

    def _sleep(self, ranks: list[int], done: Callable[[ResizeOutcome], None]) -> None:
        syncing = [r for r in ranks if self.state[r] == SYNCING]
        if syncing:  # the live engine waits for its sync to end before it can sleep
            pending = {"left": len(syncing)}

            def synced() -> None:
                pending["left"] -= 1
                if not pending["left"]:
                    self._sleep(ranks, done)

            for rank in syncing:
                self._after_sync.setdefault(rank, []).append(synced)
            return
        falling = [r for r in ranks if self.state[r] == AWAKE]
        for rank in falling:
            self._retract(rank)
            self.state[rank] = FALLING_ASLEEP
        self._dispatch()  # a retracted sample resumes on another awake engine at once
        seconds = self.config.sleep_seconds

        def asleep() -> None:
            for rank in falling:
                self.state[rank] = ASLEEP
            self.stats.switches += len(falling)
            self.stats.switch_gpu_s += seconds * self.tp * len(falling)
            done(self._outcome())

        self.loop.after(seconds if falling else 0.0, asleep)

    def _wake(self, ranks: list[int], done: Callable[[ResizeOutcome], None]) -> None:
        waking = [r for r in ranks if self.state[r] == ASLEEP]
        for rank in waking:
            self.state[rank] = WAKING
        seconds = self.config.wake_seconds

        def awake() -> None:
            for rank in waking:
                self.state[rank] = AWAKE
            self.stats.switches += len(waking)
            self.stats.switch_gpu_s += seconds * self.tp * len(waking)
            self._dispatch()
            done(self._outcome())

        self.loop.after(seconds if waking else 0.0, awake)

    # -- framework side -------------------------------------------------------------------------------

    def submit(self, durations: list[float]) -> None:
        self.queue.extend(_Job(i, d) for i, d in enumerate(durations))
        self._dispatch()

    def sync(self, done: Callable[[], None]) -> None:
        """Weight sync into every awake engine, in parallel; ``done()`` when over."""
        syncing = [r for r, s in enumerate(self.state) if s == AWAKE]
        seconds = self.config.sync_seconds
        if not syncing or seconds <= 0:
            self.loop.after(0.0, done)
            return
        for rank in syncing:
            self._retract(rank)
            self.state[rank] = SYNCING

        def synced() -> None:
            for rank in syncing:
                self.state[rank] = AWAKE
                for callback in self._after_sync.pop(rank, []):
                    callback()
            self.stats.switch_gpu_s += seconds * self.tp * len(syncing)
            self._dispatch()
            done()

        self.loop.after(seconds, synced)

    # -- internals ------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for rank, state in enumerate(self.state):
            if not self.queue:
                return
            if state == AWAKE and rank not in self.running:
                job = self.queue.popleft()
                now = self.loop.now()
                timer = self.loop.after(job.left, lambda rank=rank: self._finish(rank))
                self.running[rank] = (job, now, timer)

    def _finish(self, rank: int) -> None:
        job, started, _ = self.running.pop(rank)
        self.stats.busy_gpu_s += (self.loop.now() - started) * self.tp
        self.on_sample()
        self._dispatch()

    def _retract(self, rank: int) -> None:
        entry = self.running.pop(rank, None)
        if entry is None:
            return
        job, started, timer = entry
        timer.cancel()
        elapsed = self.loop.now() - started
        self.stats.busy_gpu_s += elapsed * self.tp
        job.left = max(0.0, job.left - elapsed)
        self.queue.appendleft(job)
        self.stats.retracted += 1


class SimPipeline:
    """One reference pipeline's loop, event by event."""

    def __init__(self, loop: EventLoop, scheduler: SimulatedScheduler, config: PipelineConfig) -> None:
        self.loop = loop
        self.scheduler = scheduler
        self.config = config
        self.stats = PipelineStats(config.name)
        self.engines = SimEngines(loop, config, self.stats, self._sample_done)
        self._rollout = 0
        self._collected = 0
        self._report: Timer | None = None
        self._last_report = -1e9
        self._asked_at = 0.0

    @property
    def name(self) -> str:
        return self.config.name

    def start(self) -> None:
        self.loop.after(self.config.start_delay_seconds, self._register)

    def _register(self) -> None:
        config = self.config
        clusters = {
            ACTOR_INFER: ClusterSpec(config.infer_tp, config.infer_gpus),
            ACTOR_TRAIN: ClusterSpec(1, config.train_gpus),
        }
        self.scheduler.register(self.name, clusters, self.engines, config.switch_costs)
        self._next_rollout()

    def _next_rollout(self) -> None:
        if self._rollout == self.config.rollouts:
            self.scheduler.release(self.name, ACTOR_INFER, self._finished)
            return
        self._asked_at = self.loop.now()
        self.scheduler.signal_demand(self.name, self.config.samples_per_rollout, self._generate)

    def _generate(self) -> None:
        self.stats.waits.append(self.loop.now() - self._asked_at)
        self._collected = 0
        target = self.config.samples_per_rollout
        self.scheduler.report_progress(self.name, target, 0, new_batch=True)
        self._last_report = self.loop.now()
        self.engines.submit(sample_durations(self.config, self._rollout))

    def _sample_done(self) -> None:
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
        self._last_report = self.loop.now()
        self.scheduler.report_progress(self.name, self.config.samples_per_rollout, self._collected, new_batch=False)

    def _train(self) -> None:
        self._asked_at = self.loop.now()
        self.scheduler.request(self.name, ACTOR_TRAIN, Priority.ACTOR_TRAINING, None, self._training)

    def _training(self) -> None:
        self.stats.waits.append(self.loop.now() - self._asked_at)
        seconds = self.config.train_seconds
        self.stats.busy_gpu_s += seconds * len(self.config.train_gpus)
        self.loop.after(seconds, lambda: self.engines.sync(self._trained))

    def _trained(self) -> None:
        self.scheduler.release(self.name, ACTOR_TRAIN)
        self.stats.rollouts_completed += 1
        self._rollout += 1
        self._next_rollout()

    def _finished(self) -> None:
        self.stats.finished_at = self.loop.now()
        self.scheduler.unregister(self.name)


@dataclass(frozen=True)
class SimRun:
    """Outcome of one simulated run of a scenario."""

    wall_s: float
    pipelines: dict[str, PipelineStats]
    gpu_busy_fraction: float
    switches: int
    switch_gpu_s: float
    rollouts: int
    events: int
    passes: int

    @property
    def switches_per_rollout(self) -> float:
        return self.switches / self.rollouts if self.rollouts else 0.0


def simulate_reference(scenario: Scenario, policy: str | None = None, *, until_s: float = 1e6) -> SimRun:
    """Run ``scenario``'s reference pipelines on one simulated scheduler (``policy``: the
    scenario's own when None).

    :raises RuntimeError: a pipeline did not finish (the simulated run stalled).
    """
    from rlix_plugin.scheduler.topology import PoolTopology

    loop = EventLoop()
    scheduler = SimulatedScheduler(loop, PoolTopology(scenario.gpus, scenario.gpus_per_node),
                                   policy or scenario.policy)
    pipelines = [SimPipeline(loop, scheduler, config) for config in scenario.pipelines]
    for pipeline in pipelines:
        pipeline.start()
    loop.run(until=until_s, stop=lambda: all(p.stats.finished_at is not None for p in pipelines))
    unfinished = [p.name for p in pipelines if p.stats.finished_at is None]
    if unfinished:
        raise RuntimeError(f"simulated run of {scenario.name!r} stalled: {unfinished} did not finish; "
                           f"{scheduler.state.demand.open_demand}, holders {scheduler.state.owner.entries()}")
    wall = max(p.stats.finished_at or 0.0 for p in pipelines)
    stats = {p.name: p.stats for p in pipelines}
    busy = sum(s.busy_gpu_s for s in stats.values())
    return SimRun(
        wall_s=wall,
        pipelines=stats,
        gpu_busy_fraction=busy / (wall * scenario.gpus) if wall > 0 else 0.0,
        switches=sum(s.switches for s in stats.values()),
        switch_gpu_s=sum(s.switch_gpu_s for s in stats.values()),
        rollouts=sum(s.rollouts_completed for s in stats.values()),
        events=loop.events,
        passes=scheduler.passes,
    )


__all__ = ["PROGRESS_INTERVAL_S", "PipelineStats", "SimEngines", "SimPipeline", "SimRun", "simulate_reference"]
