"""Metric values without I/O: the gauges read off a scheduler snapshot, and a :class:`Tally` of
counters and histograms that a :class:`Recorder` fills from the decision log and the service.

Series are keyed by their label values, in the order of the metric's ``labels``
(:mod:`.catalog`). Both exporters render these same values, so what ``/metrics`` shows is what the
snapshot and the decision log say.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlix_plugin.hookspecs import ACTOR_INFER
from rlix_plugin.scheduler.journal import ASLEEP, AWAKE, DONATE, PREEMPT, Decision
from rlix_plugin.scheduler.observe import ObserverBase

from . import catalog as m

Labels = tuple[str, ...]
Series = dict[Labels, float]


def snapshot_gauges(snapshot: Mapping[str, Any]) -> dict[str, Series]:
    """Every gauge of :data:`.catalog.SNAPSHOT_GAUGES` from a snapshot (:func:`~rlix_plugin.
    scheduler.report.snapshot`). A registered pipeline has every per-pipeline series, at 0 when it
    has nothing; every priority 0-6 has its pending series."""
    pipelines = snapshot.get("pipelines", {})
    held: Series = {}
    for entry in snapshot.get("gpus", []):
        if entry["pipeline"] is not None:
            key = (entry["pipeline"], entry["cluster"], entry["state"])
            held[key] = held.get(key, 0.0) + 1
    entitled = snapshot.get("entitled_bundles", {})
    pending: Series = {(str(p),): 0.0 for p in range(7)}
    for priority, requests in snapshot.get("pending", {}).items():
        pending[(str(priority),)] = float(len(requests))
    return {
        m.GPUS_HELD.name: held,
        m.IDLE_GPUS.name: {(): float(len(snapshot.get("idle_gpus", [])))},
        m.POOL_GPUS.name: {(): float(snapshot.get("pool", {}).get("num_gpus", 0))},
        m.PIPELINES.name: {(): float(len(pipelines))},
        m.FENCED_PIPELINES.name: {(): float(sum(1 for p in pipelines.values() if p.get("fenced")))},
        m.BUNDLES_ENTITLED.name: {(pid,): float(entitled.get(pid, 0)) for pid in pipelines},
        m.BUNDLES_AWAKE.name: {
            (pid,): float(len(info["clusters"].get(ACTOR_INFER, {}).get("awake_dp_ranks", [])))
            for pid, info in pipelines.items()
        },
        m.OPEN_DEMAND.name: {(pid,): float(info.get("open_demand") or 0) for pid, info in pipelines.items()},
        m.REMAINING.name: {(pid,): float(info.get("remaining") or 0) for pid, info in pipelines.items()},
        m.PENDING.name: pending,
    }


@dataclass
class HistogramValue:
    """Cumulative-free bucket counts (one per upper bound, then +Inf), the sum and the count."""

    buckets: list[int]
    sum: float = 0.0
    count: int = 0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        self.buckets[bisect.bisect_left(bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[int]:
        total, out = 0, []
        for n in self.buckets:
            total += n
            out.append(total)
        return out


class Sink(Protocol):
    """Where a :class:`Recorder` writes: the in-memory :class:`Tally` (local backend) or Ray's
    metrics (:mod:`.ray`). Called on the scheduler's loop: must not block."""

    def inc(self, spec: m.MetricSpec, labels: Labels, amount: float) -> None: ...

    def observe(self, spec: m.MetricSpec, labels: Labels, value: float) -> None: ...


@dataclass
class Tally:
    """Counters and histograms in memory (a :class:`Sink`)."""

    counters: dict[str, Series] = field(default_factory=dict)
    histograms: dict[str, dict[Labels, HistogramValue]] = field(default_factory=dict)

    def inc(self, spec: m.MetricSpec, labels: Labels, amount: float) -> None:
        series = self.counters.setdefault(spec.name, {})
        series[labels] = series.get(labels, 0.0) + amount

    def observe(self, spec: m.MetricSpec, labels: Labels, value: float) -> None:
        series = self.histograms.setdefault(spec.name, {})
        hist = series.get(labels)
        if hist is None:
            hist = series[labels] = HistogramValue([0] * (len(spec.buckets) + 1))
        hist.observe(spec.buckets, value)

    def copy(self) -> Tally:
        return Tally(
            {name: dict(series) for name, series in self.counters.items()},
            {
                name: {k: HistogramValue(list(h.buckets), h.sum, h.count) for k, h in series.items()}
                for name, series in self.histograms.items()
            },
        )


class Recorder(ObserverBase):
    """Counts what happens into a :class:`Sink`: decisions (attach :meth:`decided` to the
    journal's log), planning passes (it is a scheduler observer), and the waits and weight syncs
    its host reports."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def decided(self, decision: Decision) -> None:
        sink = self.sink
        sink.inc(m.DECISIONS, (decision.kind,), 1)
        if decision.kind == PREEMPT:
            sink.inc(m.PREEMPTIONS, (decision.pipeline, decision.reason), len(decision.dp_ranks))
        elif decision.kind == DONATE:
            sink.inc(m.DONATIONS, (decision.pipeline, decision.reason), len(decision.dp_ranks))
        elif decision.kind in (AWAKE, ASLEEP):
            op = m.WAKE if decision.kind == AWAKE else m.SLEEP
            sink.observe(m.RESIZE, (decision.pipeline, op), float(decision.detail.get("seconds", 0.0)))

    def planned(self, plan: object, seconds: float) -> None:
        self.sink.observe(m.CYCLE, (), seconds)

    def waited(self, op: str, pipeline_id: str, priority: int, seconds: float) -> None:
        self.sink.observe(m.REQUEST_WAIT, (pipeline_id, op, str(int(priority))), max(0.0, seconds))

    def weight_sync(self, pipeline_id: str, seconds: float) -> None:
        self.sink.observe(m.WEIGHT_SYNC, (pipeline_id,), max(0.0, seconds))


__all__ = ["HistogramValue", "Labels", "Recorder", "Series", "Sink", "Tally", "snapshot_gauges"]
