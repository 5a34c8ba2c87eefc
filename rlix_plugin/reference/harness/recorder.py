"""What happened during a run, over time: who held each GPU, the open-demand registry, the pending
requests per priority, and each pipeline's phases. The trace writer and the timeline read it.

Two feeds, one format (:class:`Frame`):

* the scheduler itself, through a listener on its state (local backend): exact, one frame
  per change; the listener runs on the scheduler loop, so it only copies a few tuples and drops
  frames that change nothing;
* the framework side, for backends whose scheduler lives elsewhere (ray): engines report the DP
  ranks awake after each resize, pipelines report their phases (both through the pipeline's
  observer, :meth:`Recorder.observer`); training holds its GPUs from
  ``train`` to the next phase (``idle`` comes before its release), open demand (the rollout's
  step target) lasts from ``rollout`` to ``wait-train``; a pending generation request is a
  pipeline with open demand and no awake engine, a pending training request one between
  ``wait-train`` and ``train``.

The framework-side feed is the evidence that does not come from the scheduler: each holder
reports taking a GPU once it has it (an engine awake, a training step started) and giving it
back before it lets go. A GPU taken while another holder still has it is a **double hold**,
recorded in :attr:`Recorder.double_holds`: what a run that survives scheduler restarts must
never show.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, CLUSTER_NAMES
from rlix_plugin.reference.framework import observer as ob

#: (pipeline, role, dp rank or None); role is "infer", "train" or another cluster name.
Holder = tuple[str, str, Union[int, None]]


@dataclass(frozen=True)
class Frame:
    t: float
    holders: tuple[Holder | None, ...]
    open_demand: tuple[tuple[str, int], ...]
    pending: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PhaseEvent:
    t: float
    pipeline: str
    phase: str  # "rollout", "wait-train", "train", "idle" or "end"
    rollout: int


#: Phases that are not a span of their own on the timeline (the pipeline holds nothing then).
QUIET_PHASES = ("idle", "end")

#: The pipeline's phases (:mod:`rlix_plugin.reference.framework.observer`) that begin a recorded
#: one; the others (generating) continue the span they are in.
_RECORDED = {ob.WAITING_ENGINES: "rollout", ob.WAITING_TRAIN: "wait-train", ob.TRAINING: "train", ob.TRAINED: "idle"}


@dataclass(frozen=True)
class DoubleHold:
    """GPU ``gpu`` taken by ``taker`` at ``t`` while ``holder`` still held it."""

    t: float
    gpu: int
    holder: Holder
    taker: Holder


def _role(cluster: str) -> str:
    return {ACTOR_INFER: "infer", ACTOR_TRAIN: "train"}.get(cluster, cluster)


def holder_of(owner: Any) -> Holder | None:
    """Scheduler owner value (None, a cluster id, or (pipeline, dp rank)) -> :data:`Holder`."""
    if owner is None:
        return None
    if isinstance(owner, tuple):
        return (owner[0], "infer", owner[1])
    for cluster in CLUSTER_NAMES:
        if owner.endswith("_" + cluster):
            return (owner[: -len(cluster) - 1], _role(cluster), None)
    return (str(owner), "?", None)


class Recorder:
    """Collects frames and phase events; thread-safe; read once the run is over."""

    def __init__(self, num_gpus: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.num_gpus = num_gpus
        self.clock = clock
        self.t0 = clock()
        self.end: float | None = None
        self.frames: list[Frame] = []
        self.phases: list[PhaseEvent] = []
        self.pipelines: list[str] = []
        self._lock = threading.Lock()
        self._last_raw: Any = None
        # Framework-side feed state (only used when the scheduler cannot be observed).
        self._holders: list[Holder | None] = [None] * num_gpus
        self._bundles: dict[str, Sequence[tuple[int, ...]]] = {}
        self._train_gpus: dict[str, tuple[int, ...]] = {}
        self._step_target: dict[str, int] = {}
        self._awake: dict[str, int] = {}
        self._demand: dict[str, int] = {}
        self._waiting: dict[str, int] = {}
        #: Every GPU one holder took while another still had it (framework-side feed).
        self.double_holds: list[DoubleHold] = []

    def now(self) -> float:
        return self.clock() - self.t0

    def add_pipeline(
        self, name: str, bundles: Sequence[tuple[int, ...]], train_gpus: tuple[int, ...], step_target: int
    ) -> None:
        with self._lock:
            self.pipelines.append(name)
            self._bundles[name] = list(bundles)
            self._train_gpus[name] = tuple(train_gpus)
            self._step_target[name] = step_target

    def finish(self) -> None:
        with self._lock:
            self.end = self.now()

    def observer(self, pipeline: str, framework_feed: bool) -> ob.PipelineObserver:
        """What ``pipeline`` reports, recorded: its phases, and with ``framework_feed`` (the
        scheduler cannot be observed) its engines."""
        return _PipelineFeed(self, pipeline, framework_feed)

    # -- feed 1: the scheduler --------------------------------------------------------------------

    def scheduler_listener(self, event: str, state: Any) -> None:
        """Scheduler listener (``event``, the scheduler's state, read on its loop): record a frame
        when ownership, demand or pending changed."""
        owner = tuple(state.owner)
        demand = tuple(sorted(state.open_demand.items()))
        counts: dict[int, int] = {}
        for request in state.pending.values():
            counts[request.priority] = counts.get(request.priority, 0) + 1
        pending = tuple(sorted(counts.items()))
        raw = (owner, demand, pending)
        if raw == self._last_raw:
            return
        self._last_raw = raw
        frame = Frame(self.now(), tuple(holder_of(o) for o in owner), demand, pending)
        with self._lock:
            self.frames.append(frame)

    # -- feed 2: the framework side ---------------------------------------------------------------

    def engines_changed(self, pipeline: str, awake: tuple[int, ...]) -> None:
        """Engines of ``pipeline`` awake after a resize (framework-side feed)."""
        with self._lock:
            self._awake[pipeline] = len(awake)
            for rank, gpus in enumerate(self._bundles.get(pipeline, ())):
                for gpu in gpus:
                    if rank in awake:
                        self._take(gpu, (pipeline, "infer", rank))
                    elif self._holders[gpu] == (pipeline, "infer", rank):
                        self._holders[gpu] = None
            self._framework_frame()

    def phase(self, pipeline: str, phase: str, rollout: int, framework_feed: bool = False) -> None:
        with self._lock:
            self.phases.append(PhaseEvent(self.now(), pipeline, phase, rollout))
            if not framework_feed:
                return
            train = self._train_gpus.get(pipeline, ())
            if phase == "train":
                self._waiting.pop(pipeline, None)
                for gpu in train:
                    self._take(gpu, (pipeline, "train", None))
            else:
                for gpu in train:
                    if self._holders[gpu] == (pipeline, "train", None):
                        self._holders[gpu] = None
            if phase == "rollout":
                self._demand[pipeline] = self._step_target.get(pipeline, 1)
            elif phase == "wait-train":
                self._demand.pop(pipeline, None)
                self._waiting[pipeline] = 1
            elif phase == "end":
                self._demand.pop(pipeline, None)
                self._waiting.pop(pipeline, None)
            self._framework_frame()

    def _take(self, gpu: int, holder: Holder) -> None:
        current = self._holders[gpu]
        if current is not None and current != holder:
            self.double_holds.append(DoubleHold(self.now(), gpu, current, holder))
        self._holders[gpu] = holder

    def _framework_frame(self) -> None:
        waiting_engines = sum(1 for name in self._demand if not self._awake.get(name))
        counts = ((1, len(self._waiting)), (6, waiting_engines))
        pending = tuple((priority, count) for priority, count in counts if count)
        self.frames.append(Frame(self.now(), tuple(self._holders), tuple(sorted(self._demand.items())), pending))

    # -- derived views ----------------------------------------------------------------------------

    def _end(self) -> float:
        return self.end if self.end is not None else self.now()

    def gpu_intervals(self) -> list[list[tuple[float, float, Holder]]]:
        """Per GPU: (start, end, holder) for every span it was held, merged across frames."""
        end = self._end()
        spans: list[list[tuple[float, float, Holder]]] = [[] for _ in range(self.num_gpus)]
        current: list[tuple[float, Holder] | None] = [None] * self.num_gpus
        for frame in self.frames:
            for gpu, holder in enumerate(frame.holders):
                open_ = current[gpu]
                if open_ is not None and open_[1] == holder:
                    continue
                if open_ is not None:
                    spans[gpu].append((open_[0], frame.t, open_[1]))
                current[gpu] = (frame.t, holder) if holder is not None else None
        for gpu, open_ in enumerate(current):
            if open_ is not None:
                spans[gpu].append((open_[0], end, open_[1]))
        return spans

    def demand_series(self) -> dict[str, list[tuple[float, int]]]:
        """Per pipeline: (t, open-demand step target, 0 when none) at every change."""
        series: dict[str, list[tuple[float, int]]] = {name: [(0.0, 0)] for name in self.pipelines}
        for frame in self.frames:
            values = dict(frame.open_demand)
            for name in set(series) | set(values):
                value = values.get(name, 0)
                points = series.setdefault(name, [(0.0, 0)])
                if points[-1][1] != value:
                    points.append((frame.t, value))
        return series

    def pending_series(self) -> dict[int, list[tuple[float, int]]]:
        """Per priority: (t, number of pending requests) at every change."""
        series: dict[int, list[tuple[float, int]]] = {}
        for frame in self.frames:
            values = dict(frame.pending)
            for priority in set(series) | set(values):
                value = values.get(priority, 0)
                points = series.setdefault(priority, [(0.0, 0)])
                if points[-1][1] != value:
                    points.append((frame.t, value))
        return series

    def phase_intervals(self) -> dict[str, list[tuple[float, float, str]]]:
        """Per pipeline: (start, end, label) for each rollout, wait and training span."""
        end = self._end()
        result: dict[str, list[tuple[float, float, str]]] = {name: [] for name in self.pipelines}
        last: dict[str, PhaseEvent] = {}
        for event in sorted(self.phases, key=lambda e: e.t):
            previous = last.get(event.pipeline)
            if previous is not None and previous.phase not in QUIET_PHASES:
                result.setdefault(event.pipeline, []).append((previous.t, event.t, _label(previous)))
            last[event.pipeline] = event
        for name, event in last.items():
            if event.phase not in QUIET_PHASES:
                result.setdefault(name, []).append((event.t, end, _label(event)))
        return result


class _PipelineFeed(ob.NullObserver):
    """One pipeline's observer reports, turned into the recorder's phase events (a phase reported
    again for the same rollout is one event) and, on the framework-side feed, engine changes."""

    def __init__(self, recorder: Recorder, pipeline: str, framework_feed: bool) -> None:
        self.recorder = recorder
        self.pipeline = pipeline
        self.framework_feed = framework_feed
        self._last: tuple[str, int] | None = None

    def phase(self, phase: str, rollout: int) -> None:
        recorded = _RECORDED.get(phase)
        if recorded is None or self._last == (recorded, rollout):
            return
        self._last = (recorded, rollout)
        self.recorder.phase(self.pipeline, recorded, rollout, self.framework_feed)

    def engines(self, awake: tuple[int, ...]) -> None:
        if self.framework_feed:
            self.recorder.engines_changed(self.pipeline, awake)

    def finished(self, phase: str, error: str | None) -> None:
        self.recorder.phase(self.pipeline, "end", -1, self.framework_feed)


def _label(event: PhaseEvent) -> str:
    return {"rollout": "rollout", "wait-train": "wait for train GPUs", "train": "train"}.get(
        event.phase, event.phase
    ) + f" {event.rollout}"


__all__ = ["DoubleHold", "Frame", "Holder", "PhaseEvent", "QUIET_PHASES", "Recorder", "holder_of"]
