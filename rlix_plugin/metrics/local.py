"""The local backend's metrics: ``prometheus_client`` serving the catalog on ``RLIX_METRICS_PORT``.

One HTTP endpoint per process (``prometheus_client.start_http_server`` on its own registry, so
nothing else registered in the process leaks in). It shows the newest
:class:`~rlix_plugin.backends.local.LocalScheduler` of the process that was created while the
variable was set; a closed scheduler leaves it. Gauges are read off the scheduler's snapshot at
scrape time, on the scheduler's loop, together with a copy of its counters and histograms, so one
scrape is one consistent view.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from rlix_plugin.hookspecs import RlixError

from . import catalog as m
from .values import Recorder, Tally, snapshot_gauges

if TYPE_CHECKING:
    from rlix_plugin.backends.local import LocalScheduler


class SchedulerMetrics:
    """The metrics of one local scheduler: a :class:`Recorder` into a :class:`Tally`, observing
    its service and its decision log."""

    def __init__(self, scheduler: LocalScheduler) -> None:
        self.scheduler = scheduler
        self.started_at = time.time()
        self.tally = Tally()
        self.recorder = Recorder(self.tally)
        scheduler.service.add_observer(self.recorder)
        scheduler.journal.log.listeners.append(self.recorder.decided)

    def collect(self) -> list[Metric]:
        scheduler = self.scheduler
        snap, tally = scheduler.read(lambda: (scheduler.service.snapshot(), self.tally.copy()))
        return render(snap, tally, self.started_at, restarts=0)


def render(snapshot: dict[str, Any], tally: Tally, started_at: float, restarts: int) -> list[Metric]:
    """Every metric of the catalog as ``prometheus_client`` families."""
    gauges = snapshot_gauges(snapshot)
    gauges[m.START_TIME.name] = {(): started_at}
    counters = {name: dict(series) for name, series in tally.counters.items()}
    counters[m.RESTARTS.name] = {(): float(restarts)}
    families: list[Metric] = []
    for spec in m.METRICS:
        labels = list(spec.labels)
        if spec.kind == m.GAUGE:
            gauge = GaugeMetricFamily(spec.name, spec.help, labels=labels)
            for key, value in sorted(gauges.get(spec.name, {}).items()):
                gauge.add_metric(list(key), value)
            family: Metric = gauge
        elif spec.kind == m.COUNTER:
            counter = CounterMetricFamily(spec.name, spec.help, labels=labels)
            for key, value in sorted(counters.get(spec.name, {}).items()):
                counter.add_metric(list(key), value)
            family = counter
        else:
            histogram = HistogramMetricFamily(spec.name, spec.help, labels=labels)
            for key, hist in sorted(tally.histograms.get(spec.name, {}).items()):
                bounds = [floatToGoString(b) for b in spec.buckets] + ["+Inf"]
                histogram.add_metric(list(key), list(zip(bounds, hist.cumulative(), strict=False)), hist.sum)
            family = histogram
        families.append(family)
    return families


class _Endpoint:
    """The collector the process' endpoint serves: whichever scheduler is current."""

    def __init__(self) -> None:
        self.current: SchedulerMetrics | None = None

    def collect(self) -> Iterator[Metric]:
        current = self.current
        if current is None:
            return iter(())
        try:
            return iter(current.collect())
        except RlixError:  # closed meanwhile: an empty scrape, not an HTTP 500
            return iter(())


_lock = threading.Lock()
_endpoint: _Endpoint | None = None
_serving: tuple[str, int] | None = None
_server: Any = None


def attach(scheduler: LocalScheduler, address: str, port: int) -> SchedulerMetrics:
    """Serve ``scheduler``'s metrics on ``address:port`` (started on first use; one per process).

    :raises RlixError: the endpoint cannot be served there (the port is taken), or the process
        already serves it elsewhere.
    """
    global _endpoint, _serving, _server
    with _lock:
        if _endpoint is None:
            endpoint = _Endpoint()
            registry = CollectorRegistry(auto_describe=False)
            registry.register(endpoint)
            try:
                _server, _thread = start_http_server(port, addr=address, registry=registry)
            except OSError as exc:
                raise RlixError(f"RLIX_METRICS_PORT: cannot serve metrics on {address}:{port}: {exc}") from None
            _endpoint, _serving = endpoint, (address, port)
        elif _serving is not None and _serving != (address, port):
            served_address, served_port = _serving
            raise RlixError(
                f"RLIX_METRICS_PORT: this process already serves metrics on "
                f"{served_address}:{served_port}, not {address}:{port}"
            )
        metrics = SchedulerMetrics(scheduler)
        _endpoint.current = metrics
        return metrics


def detach(metrics: SchedulerMetrics) -> None:
    """``metrics``' scheduler closed: the endpoint shows nothing until the next one attaches."""
    with _lock:
        if _endpoint is not None and _endpoint.current is metrics:
            _endpoint.current = None


def stop() -> None:
    """Stop serving the process' endpoint (the next scheduler that asks starts it again)."""
    global _endpoint, _serving, _server
    with _lock:
        if _server is not None:
            _server.shutdown()
            _server.server_close()
        _endpoint = _serving = _server = None


def current() -> SchedulerMetrics | None:
    """The metrics the process' endpoint shows now, if any."""
    return _endpoint.current if _endpoint is not None else None


__all__ = ["SchedulerMetrics", "attach", "current", "detach", "render", "stop"]
