"""What the timeline draws: GPU ownership and utilisation, sampled at a fixed virtual interval.

Each sample reads who holds every GPU (the scheduler's ownership table: a stage, an engine awake
or in transition, or nobody) and the engines' running counters (GPUs generating, their
throughput-weighted share, GPUs switching) plus the GPUs training. Sampling costs O(GPUs) per
sample and a few hundred samples per run, however many events the run has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .events import EventLoop

if TYPE_CHECKING:
    from .driver import SimulatedScheduler
    from .pipeline import SimPipeline


@dataclass
class Timeline:
    """Samples of one simulated run; ``held[name][i]`` is the GPUs pipeline ``name`` held at
    ``times[i]``; the other series are pool totals at the same instants."""

    num_gpus: int
    pipelines: list[str]
    times: list[float] = field(default_factory=list)
    held: dict[str, list[int]] = field(default_factory=dict)
    generating: list[float] = field(default_factory=list)
    training: list[float] = field(default_factory=list)
    switching: list[float] = field(default_factory=list)
    #: GPUs' decode throughput as a share of their peak, plus training GPUs.
    useful: list[float] = field(default_factory=list)


class TimelineRecorder:
    """Samples every ``step_s`` virtual seconds until every pipeline is done."""

    def __init__(
        self,
        loop: EventLoop,
        scheduler: SimulatedScheduler,
        pipelines: Sequence[SimPipeline],
        num_gpus: int,
        step_s: float,
    ) -> None:
        self.loop = loop
        self.scheduler = scheduler
        self.pipelines = list(pipelines)
        self.step_s = max(step_s, 1e-6)
        self.timeline = Timeline(num_gpus, [p.name for p in self.pipelines])
        for name in self.timeline.pipelines:
            self.timeline.held[name] = []

    def start(self) -> None:
        self.loop.after(0.0, self._sample)

    def _sample(self) -> None:
        timeline, state = self.timeline, self.scheduler.state
        stage_owner = {cid: alloc.pipeline_id for cid, alloc in state.fixed.items()}
        for request in state.pending.values():
            stage_owner.setdefault(request.cluster_id, request.pipeline_id)
        counts: dict[str, int] = {}
        for holder in state.owner:
            if holder is None:
                continue
            name = holder[0] if isinstance(holder, tuple) else stage_owner.get(holder)
            if name is not None:
                counts[name] = counts.get(name, 0) + 1
        timeline.times.append(self.loop.now())
        for name in timeline.pipelines:
            timeline.held[name].append(counts.get(name, 0))
        timeline.generating.append(sum(p.engines.busy_gpus for p in self.pipelines))
        timeline.training.append(sum(p.training_gpus for p in self.pipelines))
        timeline.switching.append(sum(p.engines.switching_gpus for p in self.pipelines))
        timeline.useful.append(sum(p.engines.useful_gpus + p.training_gpus for p in self.pipelines))
        if not all(p.done for p in self.pipelines):
            self.loop.after(self.step_s, self._sample)


__all__ = ["Timeline", "TimelineRecorder"]
