"""The local backend's metrics endpoint (``RLIX_METRICS_PORT``), scraped over HTTP during a run
and checked against the scheduler's snapshot and its decision log."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.hookspecs import ACTOR_TRAIN, InvalidRequestError, Priority, RlixError
from rlix_plugin.metrics import catalog, local, report_weight_sync

from ..waiting import wait_until
from .support import SlowEngines, clusters, comparable, expected_gauges, free_port, hooks_on, spawn


@pytest.fixture
def endpoint(monkeypatch):
    port = free_port()
    monkeypatch.setenv("RLIX_METRICS_PORT", str(port))
    yield f"http://127.0.0.1:{port}/metrics"
    local.stop()


def scrape(url):
    """name -> labels (a sorted tuple of pairs) -> value, and name -> type."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples, types


def by_labels(series, spec):
    """A scraped series keyed like the catalog's (label values in the spec's order)."""
    return {tuple(dict(key)[label] for label in spec.labels): value for key, value in series.items()}


def test_scraped_during_a_run_the_metrics_match_the_snapshot_and_the_log(endpoint):
    scheduler = LocalScheduler(4, 4, resize_timeout_s=5)
    try:
        options = {"scheduler": scheduler}
        runs = [spawn("local", options, pid, train) for pid, train in (("p1", (0, 1)), ("p2", (2, 3)))]
        wait_until(
            lambda: all(r.done_rollouts >= 3 for r in runs) or any(r.error for r in runs),
            60,
            "three rollouts of each pipeline",
        )
        # Mid-run: what a scrape shows right now is what the snapshot shows.
        samples, types = scrape(endpoint)
        assert {spec.name.removesuffix("_total") for spec in catalog.METRICS} <= set(types)
        assert all(types[spec.name.removesuffix("_total")] == spec.kind for spec in catalog.METRICS)
        assert samples["rlix_pipelines"] == {(): 2.0}
        for run in runs:
            run.finish()
        hooks = hooks_on("local", options, SlowEngines("p3"))
        hooks.register_pipeline(pipeline_id="p3", clusters=clusters((0, 1)))
        hooks.signal_demand(pipeline_id="p3", rollout_id=0, step_target=5, timeout_s=10)
        hooks.request_gpus(pipeline_id="p3", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=10)
        wait_until(lambda: scheduler.snapshot()["moves_in_flight"] == 0, 10, "a quiet pool")
        before = scheduler.snapshot()
        samples, _ = scrape(endpoint)
        assert comparable(scheduler.snapshot()) == comparable(before), "the pool changed during the scrape"
        for name, series in expected_gauges(before).items():
            spec = next(s for s in catalog.METRICS if s.name == name)
            assert by_labels(samples.get(name, {}), spec) == series, name
        assert by_labels(samples["rlix_gpus_held"], catalog.GPUS_HELD)[("p3", ACTOR_TRAIN, "training")] == 2.0
        # Counters and histograms: what the decision log and the calls say happened.
        decisions = scheduler.decisions()
        kinds = {}
        for d in decisions:
            kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        assert by_labels(samples["rlix_decisions_total"], catalog.DECISIONS) == {
            (k,): float(n) for k, n in kinds.items()
        }
        for name, kind, spec in (
            ("rlix_preemptions_total", "preempt", catalog.PREEMPTIONS),
            ("rlix_donations_total", "donate", catalog.DONATIONS),
        ):
            counted = {}
            for d in decisions:
                if d["kind"] == kind:
                    key = (d["pipeline"], d["reason"])
                    counted[key] = counted.get(key, 0.0) + len(d["dp_ranks"])
            assert by_labels(samples.get(name, {}), spec) == counted, name
        assert kinds.get("preempt"), "the run had preemptions"
        resizes = by_labels(samples["rlix_resize_seconds_count"], catalog.RESIZE)
        for (pid, op), count in resizes.items():
            assert count == len(
                [d for d in decisions if d["pipeline"] == pid and d["kind"] == ("awake" if op == "wake" else "asleep")]
            )
        waits = by_labels(samples["rlix_request_wait_seconds_count"], catalog.REQUEST_WAIT)
        for run in runs:
            assert waits[(run.pipeline_id, "signal_demand", "6")] == run.signals
            assert waits[(run.pipeline_id, "request_gpus", "1")] == run.trainings
            assert (
                by_labels(samples["rlix_weight_sync_seconds_count"], catalog.WEIGHT_SYNC)[(run.pipeline_id,)]
                == run.done_rollouts
            )
        cycles = samples["rlix_scheduling_cycle_seconds_count"][()]
        assert cycles >= before["cycles"] > 0
        assert samples["rlix_scheduler_restarts_total"] == {(): 0.0}
    finally:
        scheduler.close()
    samples, _ = scrape(endpoint)
    assert "rlix_pipelines" not in samples, "a closed scheduler leaves the endpoint"


def test_the_endpoint_refuses_a_bad_port_and_a_second_address(monkeypatch, endpoint):
    monkeypatch.setenv("RLIX_METRICS_PORT", "ninety")
    with pytest.raises(InvalidRequestError, match=r"RLIX_METRICS_PORT='ninety' is not a port"):
        LocalScheduler(4, 4)
    monkeypatch.setenv("RLIX_METRICS_PORT", "70000")
    with pytest.raises(InvalidRequestError, match=r"RLIX_METRICS_PORT='70000' is not a port"):
        LocalScheduler(4, 4)
    port = int(endpoint.split(":")[2].split("/")[0])
    monkeypatch.setenv("RLIX_METRICS_PORT", str(port))
    first = LocalScheduler(4, 4)
    try:
        monkeypatch.setenv("RLIX_METRICS_PORT", str(free_port()))
        with pytest.raises(RlixError, match=f"already serves metrics on 127.0.0.1:{port}"):
            LocalScheduler(4, 4)
    finally:
        first.close()


def test_weight_syncs_reach_the_endpoint_and_bad_ones_are_refused(endpoint):
    scheduler = LocalScheduler(4, 4)
    try:
        report_weight_sync("p9", 0.25)
        scheduler.read(lambda: None)  # the report was queued on the loop before this
        samples, _ = scrape(endpoint)
        assert samples["rlix_weight_sync_seconds_count"] == {(("pipeline", "p9"),): 1.0}
        assert samples["rlix_weight_sync_seconds_sum"] == {(("pipeline", "p9"),): 0.25}
        for bad in (-1.0, float("nan"), "1s", True):
            with pytest.raises(InvalidRequestError, match="seconds must be a finite number >= 0"):
                report_weight_sync("p9", bad)
        with pytest.raises(InvalidRequestError, match="pipeline_id must be a non-empty str"):
            report_weight_sync("", 1.0)
    finally:
        scheduler.close()


def test_importing_the_package_and_its_metrics_stays_cheap():
    code = (
        "import sys, rlix_plugin, rlix_plugin.metrics, rlix_plugin.metrics.catalog; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'torch', 'prometheus_client'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
