"""Simulate one scenario under one sharing policy: every pipeline (:mod:`.pipeline`) on one
simulated scheduler (:mod:`.driver`, the live scheduler's core) in virtual time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rlix_plugin.hookspecs import RlixError
from rlix_plugin.scenario import Scenario
from rlix_plugin.scheduler.topology import PoolTopology

from .driver import SimulatedScheduler
from .engines import PipelineStats
from .events import EventLoop
from .pipeline import SimPipeline
from .recorder import Timeline, TimelineRecorder


class SimulationStalled(RlixError):
    """A simulated run ended with pipelines that never finished (the scheduler left them
    without GPUs); the message names them and the scheduler's view."""


@dataclass(frozen=True)
class SimRun:
    """Outcome of one simulated run (virtual seconds, except ``cpu_s``)."""

    scenario: str
    policy: str
    #: When the last pipeline finished (or was stopped).
    wall_s: float
    pipelines: dict[str, PipelineStats]
    num_gpus: int
    switches: int
    switch_gpu_s: float
    rollouts: int
    events: int
    passes: int
    #: Seconds of this machine's time the simulation took.
    cpu_s: float
    timeline: Timeline | None = None

    @property
    def gpu_busy_fraction(self) -> float:
        """GPU-seconds generating (at least one sequence) or training, over wall x GPUs."""
        busy = sum(s.busy_gpu_s for s in self.pipelines.values())
        return busy / (self.wall_s * self.num_gpus) if self.wall_s > 0 else 0.0

    @property
    def gpu_useful_fraction(self) -> float:
        """Like :attr:`gpu_busy_fraction`, each engine weighted by its throughput over its peak."""
        useful = sum(s.useful_gpu_s for s in self.pipelines.values())
        return useful / (self.wall_s * self.num_gpus) if self.wall_s > 0 else 0.0

    @property
    def switches_per_rollout(self) -> float:
        return self.switches / self.rollouts if self.rollouts else 0.0


def simulate(
    scenario: Scenario,
    policy: str | None = None,
    *,
    until_s: float = 1e9,
    timeline_step_s: float | None = None,
    on_rollout: Callable[[int], None] | None = None,
) -> SimRun:
    """Run ``scenario``'s pipelines on one simulated scheduler (``policy``: the scenario's own
    when None). ``timeline_step_s`` records a :class:`Timeline` sampled that often;
    ``on_rollout(n)`` as each pipeline's rollouts are accounted for (:class:`.pipeline.SimPipeline`).

    :raises SimulationStalled: a pipeline did not finish by ``until_s`` virtual seconds.
    """
    started = time.perf_counter()
    loop = EventLoop()
    policy = policy or scenario.policy
    scheduler = SimulatedScheduler(loop, PoolTopology(scenario.gpus, scenario.gpus_per_node), policy)
    pipelines = [SimPipeline(loop, scheduler, config, on_rollout) for config in scenario.pipelines]
    recorder = None
    if timeline_step_s is not None:
        recorder = TimelineRecorder(loop, scheduler, pipelines, scenario.gpus, timeline_step_s)
        recorder.start()
    for pipeline in pipelines:
        pipeline.start()
    loop.run(until=until_s, stop=lambda: all(p.done for p in pipelines))
    unfinished = [p.name for p in pipelines if not p.done]
    if unfinished:
        state = scheduler.state
        raise SimulationStalled(
            f"simulated run of {scenario.name!r} ({policy}) stalled at {loop.now():.1f}s: {unfinished} did not finish; "
            f"open demand {state.demand.open_demand}, pending {sorted(state.pending)}"
        )
    stats = {p.name: p.stats for p in pipelines}
    return SimRun(
        scenario=scenario.name,
        policy=policy,
        wall_s=max(s.finished_at or 0.0 for s in stats.values()),
        pipelines=stats,
        num_gpus=scenario.gpus,
        switches=sum(s.switches for s in stats.values()),
        switch_gpu_s=sum(s.switch_gpu_s for s in stats.values()),
        rollouts=sum(s.rollouts_completed for s in stats.values()),
        events=loop.events,
        passes=scheduler.passes,
        cpu_s=time.perf_counter() - started,
        timeline=recorder.timeline if recorder is not None else None,
    )


__all__ = ["SimRun", "SimulationStalled", "simulate"]
