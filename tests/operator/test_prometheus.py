"""The Grafana dashboard (docs/grafana/rlix.json) against a real Prometheus scraping a run's
metrics endpoint (local backend): every panel's query returns series with the labels its legend
shows. The Ray endpoint gets the same check in test_ray.py."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest

from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.metrics import catalog, local

from ..waiting import wait_until
from .prom import DASHBOARD, PROMETHEUS, SKIP_REASON, Prometheus, dashboard_queries, wait_answered
from .support import free_port, spawn


def series_names() -> set[str]:
    """Every series name the catalog exports (a histogram's ``_bucket``, ``_sum`` and ``_count``)."""
    names = set()
    for spec in catalog.METRICS:
        suffixes = ("_bucket", "_sum", "_count") if spec.kind == catalog.HISTOGRAM else ("",)
        names.update(spec.name + suffix for suffix in suffixes)
    return names


def test_the_dashboard_is_what_its_builder_makes_and_queries_only_exported_metrics(monkeypatch):
    spec = importlib.util.spec_from_file_location("rlix_grafana_build", DASHBOARD.parent / "build.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    assert json.loads(DASHBOARD.read_text()) == module.build(), (
        "docs/grafana/rlix.json is stale: python docs/grafana/build.py > docs/grafana/rlix.json"
    )
    queries = dashboard_queries()
    assert len(queries) >= 20
    exported = series_names()
    for title, expr, _ in queries:
        named = {f"rlix_{name}" for name in re.findall(r'\(ray_\)\?rlix_(\w+)"', expr)}
        assert named and named <= exported, f"{title}: {expr} names a metric rlix does not export"


@pytest.mark.skipif(PROMETHEUS is None, reason=SKIP_REASON)
def test_every_panel_query_returns_series_from_a_run(tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("RLIX_METRICS_PORT", str(port))
    scheduler = LocalScheduler(4, 4, resize_timeout_s=5)
    prometheus = None
    runs = []
    try:
        options = {"scheduler": scheduler}
        runs = [spawn("local", options, pid, train, train_s=0.1) for pid, train in (("p1", (0, 1)), ("p2", (2, 3)))]
        prometheus = Prometheus(tmp_path, [f"127.0.0.1:{port}"])
        wait_until(prometheus.targets_up, 30, "Prometheus scraping the run's endpoint", interval_s=0.1)
        missing = wait_answered(prometheus)
        assert not missing, "queries without series:\n" + "\n".join(missing)
        pipelines = prometheus.query('max({__name__=~"(ray_)?rlix_pipelines"})')
        assert float(pipelines[0]["value"][1]) == 2.0
    finally:
        for run in runs:
            run.finish()
        if prometheus is not None:
            prometheus.close()
        scheduler.close()
        local.stop()
