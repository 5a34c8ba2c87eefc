"""What the scheduler has measured about each pipeline: what a switch costs it, and how fast it
generates. Pure; the driver feeds observations with its own clock.

* **Switch costs.** Every resize the scheduler issues is timed; the estimate of a pipeline's wake
  (or sleep) is the median of its last ``window`` wakes (sleeps), like verl's
  ``switch_cost_window_size``. Until the first one is measured, the estimate a framework declared
  at registration stands (:class:`~rlix_plugin.hookspecs.SwitchCosts`), else zero -- which makes
  the switch-aware rules inactive, as if switching were free, until there is evidence it is not.
* **Throughput.** Engine-seconds per finished sample, from progress reports: between two reports
  of a pipeline, the GPU bundles it had awake times the elapsed time, over the samples completed
  in between, summed over the last ``window`` intervals with progress.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from rlix_plugin.hookspecs import SwitchCosts

_first, _second = itemgetter(0), itemgetter(1)

#: Resizes (and progress intervals) remembered per pipeline.
DEFAULT_WINDOW = 8


@dataclass
class _Pipeline:
    declared: SwitchCosts
    wakes: deque[float]
    sleeps: deque[float]
    #: (engine-seconds, samples) per progress interval that completed samples.
    intervals: deque[tuple[float, int]]
    last_report: float | None = None
    last_completed: int = 0
    pending_engine_s: float = 0.0
    switches: int = 0
    switch_gpu_s: float = 0.0
    # The estimates, recomputed when an observation changes them (the planner reads them many
    # times a pass): wake, sleep, their sum, and engine-seconds per sample.
    wake_s: float = 0.0
    sleep_s: float = 0.0
    switch_s: float = 0.0
    sample_s: float | None = None

    def update_switch(self) -> None:
        self.wake_s = statistics.median(self.wakes) if self.wakes else self.declared.wake_seconds
        self.sleep_s = statistics.median(self.sleeps) if self.sleeps else self.declared.sleep_seconds
        self.switch_s = self.wake_s + self.sleep_s

    def update_sample(self) -> None:
        engine_s = sum(map(_first, self.intervals))  # the same additions, in the same order
        samples = sum(map(_second, self.intervals))
        self.sample_s = engine_s / samples if samples and engine_s > 0 else None


class Estimates:
    """Per-pipeline switch-cost and throughput estimates."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = window
        self._pipelines: dict[str, _Pipeline] = {}

    def register(self, pipeline_id: str, declared: SwitchCosts | None) -> None:
        entry = self._pipelines[pipeline_id] = _Pipeline(
            declared or SwitchCosts(),
            deque(maxlen=self.window),
            deque(maxlen=self.window),
            deque(maxlen=self.window * 4),
        )
        entry.update_switch()

    def forget(self, pipeline_id: str) -> None:
        self._pipelines.pop(pipeline_id, None)

    # -- persistence (see :mod:`.persist`) ------------------------------------------------------------

    def dump(self, pipeline_id: str, age: Callable[[float], float]) -> dict[str, Any] | None:
        """What was measured about ``pipeline_id`` as plain data; ``age`` turns a clock reading
        into the form the record keeps (seconds before the save)."""
        entry = self._pipelines.get(pipeline_id)
        if entry is None:
            return None
        return {
            "declared": [entry.declared.wake_seconds, entry.declared.sleep_seconds, entry.declared.sync_seconds],
            "wakes": list(entry.wakes),
            "sleeps": list(entry.sleeps),
            "intervals": [list(i) for i in entry.intervals],
            "last_report": None if entry.last_report is None else age(entry.last_report),
            "last_completed": entry.last_completed,
            "pending_engine_s": entry.pending_engine_s,
            "switches": entry.switches,
            "switch_gpu_s": entry.switch_gpu_s,
        }

    def load(self, pipeline_id: str, data: Mapping[str, Any], clock_of: Callable[[float], float]) -> None:
        """Restore what :meth:`dump` wrote; ``clock_of`` turns the record's times back into this
        clock's readings."""
        wake, sleep, sync = data["declared"]
        self.register(pipeline_id, SwitchCosts(wake, sleep, sync))
        entry = self._pipelines[pipeline_id]
        entry.wakes.extend(float(x) for x in data["wakes"])
        entry.sleeps.extend(float(x) for x in data["sleeps"])
        entry.intervals.extend((float(e), int(n)) for e, n in data["intervals"])
        entry.last_report = None if data["last_report"] is None else clock_of(data["last_report"])
        entry.last_completed = int(data["last_completed"])
        entry.pending_engine_s = float(data["pending_engine_s"])
        entry.switches = int(data["switches"])
        entry.switch_gpu_s = float(data["switch_gpu_s"])
        entry.update_switch()  # the estimates the planner reads follow the restored observations
        entry.update_sample()

    # -- switches -------------------------------------------------------------------------------------

    def observe_resize(self, pipeline_id: str, wake: bool, seconds: float, ranks: int, tp: int) -> None:
        """One resize call finished: ``ranks`` engines of ``tp`` GPUs each woke (or slept) in
        ``seconds``, in parallel."""
        entry = self._pipelines.get(pipeline_id)
        if entry is None or seconds < 0:
            return
        (entry.wakes if wake else entry.sleeps).append(seconds)
        entry.switches += ranks
        entry.switch_gpu_s += seconds * ranks * tp
        entry.update_switch()

    def wake_s(self, pipeline_id: str) -> float:
        entry = self._pipelines.get(pipeline_id)
        return entry.wake_s if entry is not None else 0.0

    def sleep_s(self, pipeline_id: str) -> float:
        entry = self._pipelines.get(pipeline_id)
        return entry.sleep_s if entry is not None else 0.0

    def sync_s(self, pipeline_id: str) -> float:
        """Declared seconds to re-sync one awake engine's weights after a training step (the
        framework syncs; the scheduler does not see it happen)."""
        entry = self._pipelines.get(pipeline_id)
        return entry.declared.sync_seconds if entry is not None else 0.0

    def switch_s(self, pipeline_id: str) -> float:
        """A sleep plus a wake: what one round trip of a bundle costs this pipeline."""
        entry = self._pipelines.get(pipeline_id)
        return entry.switch_s if entry is not None else 0.0

    def switches(self, pipeline_id: str) -> tuple[int, float]:
        """(engine switches made, GPU-seconds they took) so far."""
        entry = self._pipelines.get(pipeline_id)
        return (entry.switches, entry.switch_gpu_s) if entry is not None else (0, 0.0)

    # -- throughput -----------------------------------------------------------------------------------

    def observe_progress(
        self, pipeline_id: str, now: float, completed: int, awake_bundles: int, new_batch: bool
    ) -> None:
        """A progress report: ``completed`` samples so far in the rollout, with ``awake_bundles``
        engines awake since the previous report."""
        entry = self._pipelines.get(pipeline_id)
        if entry is None:
            return
        if new_batch or entry.last_report is None or completed < entry.last_completed:
            entry.last_report, entry.last_completed, entry.pending_engine_s = now, completed, 0.0
            return
        entry.pending_engine_s += max(0.0, now - entry.last_report) * awake_bundles
        entry.last_report = now
        done = completed - entry.last_completed
        if done > 0:
            entry.intervals.append((entry.pending_engine_s, done))
            entry.pending_engine_s = 0.0
            entry.last_completed = completed
            entry.update_sample()

    def sample_s(self, pipeline_id: str) -> float | None:
        """Engine-seconds per finished sample, or None before anything was measured."""
        entry = self._pipelines.get(pipeline_id)
        return entry.sample_s if entry is not None else None


__all__ = ["DEFAULT_WINDOW", "Estimates"]
