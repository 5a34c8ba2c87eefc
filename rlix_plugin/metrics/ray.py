"""The Ray backend's metrics: the catalog through Ray's own metrics pipeline (``ray.util.metrics``).

The scheduler actor owns a :class:`RaySink`: counters and histograms are written as things happen
(a :class:`~.values.Recorder` over the sink), the snapshot's gauges every
:data:`GAUGE_PERIOD_S` (:meth:`RaySink.set_gauges`). Ray's metrics agent on the actor's node
exports them with every other Ray metric, named ``ray_<name>`` (Ray adds the prefix). Ray keeps a
gauge series forever once set, so a series that leaves the snapshot (a pipeline unregistered) is
set to 0, not dropped. Ray records a histogram observation at its bucket's midpoint, so
``_sum`` is approximate there; ``_count`` and the buckets are exact.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

from . import catalog as m
from .values import Labels, Recorder, Series

#: Seconds between two refreshes of the snapshot's gauges (Ray reports them every few seconds).
GAUGE_PERIOD_S = 1.0


class RaySink:
    """:class:`~.values.Sink` onto ``ray.util.metrics``; one per process and metric set."""

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}
        self._gauge_keys: dict[str, set[Labels]] = {}

    def inc(self, spec: m.MetricSpec, labels: Labels, amount: float) -> None:
        if amount > 0:
            self._metric(spec).inc(amount, tags=dict(zip(spec.labels, labels, strict=False)))

    def observe(self, spec: m.MetricSpec, labels: Labels, value: float) -> None:
        self._metric(spec).observe(value, tags=dict(zip(spec.labels, labels, strict=False)))

    def set_gauges(self, values: Mapping[str, Series]) -> None:
        """Set every gauge in ``values`` (by metric name); series set before and absent now go
        to 0."""
        for spec in m.METRICS:
            if spec.kind != m.GAUGE or spec.name not in values:
                continue
            series = values[spec.name]
            gauge = self._metric(spec)
            for key in self._gauge_keys.get(spec.name, set()) - series.keys():
                gauge.set(0.0, tags=dict(zip(spec.labels, key, strict=False)))
            for key, value in series.items():
                gauge.set(value, tags=dict(zip(spec.labels, key, strict=False)))
            self._gauge_keys[spec.name] = self._gauge_keys.get(spec.name, set()) | set(series)

    def _metric(self, spec: m.MetricSpec) -> Any:
        metric = self._metrics.get(spec.name)
        if metric is None:
            if spec.kind == m.COUNTER:
                metric = Counter(spec.name, spec.help, tag_keys=spec.labels)
            elif spec.kind == m.HISTOGRAM:
                metric = Histogram(spec.name, spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels)
            else:
                metric = Gauge(spec.name, spec.help, tag_keys=spec.labels)
            self._metrics[spec.name] = metric
        return metric


_lock = threading.Lock()
_process: Recorder | None = None


def process_recorder() -> Recorder:
    """A recorder for this (framework) process: what :func:`rlix_plugin.metrics.report_weight_sync`
    writes to on Ray."""
    global _process
    with _lock:
        if _process is None:
            _process = Recorder(RaySink())
        return _process


__all__ = ["GAUGE_PERIOD_S", "RaySink", "process_recorder"]
