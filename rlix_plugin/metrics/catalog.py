"""Every metric rlix exports: name, type, help, labels and buckets, in one table.

Names follow Prometheus' conventions: the ``rlix_`` prefix, base units (seconds), ``_total`` for
counters, ``_seconds`` for durations. Both exporters -- ``prometheus_client`` on the local backend
(:mod:`.local`) and Ray's metrics pipeline on the Ray backend (:mod:`.ray`, where Ray itself adds
``ray_`` in front of every name) -- export exactly this table; the README's metric list and the
Grafana dashboard's queries are checked against it. Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass

GAUGE = "gauge"
COUNTER = "counter"
HISTOGRAM = "histogram"

#: Seconds a caller may wait for GPUs, from at once to the longest timeouts frameworks use.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Engine switches take 0.1-6 s to wake or sleep, weight syncs 0.02-60 s (docs/switch-costs.md).
SWITCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
#: A planning pass takes well under a millisecond on a small pool (benchmarks/planner.py).
CYCLE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


GPUS_HELD = MetricSpec(
    "rlix_gpus_held",
    GAUGE,
    "GPUs held, by pipeline, cluster and state (awake, waking, falling_asleep: an engine; training: "
    "a stage holds them; reserved: kept for a stage about to be granted)",
    ("pipeline", "cluster", "state"),
)
IDLE_GPUS = MetricSpec("rlix_idle_gpus", GAUGE, "GPUs nobody holds")
POOL_GPUS = MetricSpec("rlix_pool_gpus", GAUGE, "GPUs in the pool")
PIPELINES = MetricSpec("rlix_pipelines", GAUGE, "Registered pipelines")
FENCED_PIPELINES = MetricSpec(
    "rlix_fenced_pipelines", GAUGE, "Pipelines fenced after a failed resize or as unresponsive, not yet reclaimed"
)
BUNDLES_ENTITLED = MetricSpec(
    "rlix_generation_bundles_entitled",
    GAUGE,
    "Generation bundles the planner's last pass aimed to give the pipeline (its target)",
    ("pipeline",),
)
BUNDLES_AWAKE = MetricSpec(
    "rlix_generation_bundles_awake", GAUGE, "Generation engines awake and serving", ("pipeline",)
)
OPEN_DEMAND = MetricSpec(
    "rlix_open_demand_samples",
    GAUGE,
    "Step target of the pipeline's open demand (0: no rollout in progress)",
    ("pipeline",),
)
REMAINING = MetricSpec(
    "rlix_remaining_samples", GAUGE, "Samples the pipeline's rollout still has to generate", ("pipeline",)
)
PENDING = MetricSpec("rlix_pending_requests", GAUGE, "Requests waiting to be granted, by priority (0-6)", ("priority",))
START_TIME = MetricSpec("rlix_scheduler_start_time_seconds", GAUGE, "When the scheduler started (Unix time)")
RESTARTS = MetricSpec(
    "rlix_scheduler_restarts_total",
    COUNTER,
    "Schedulers started before this one on the same Ray cluster (always 0 on the local backend, whose "
    "scheduler lives and dies with its process)",
)
PREEMPTIONS = MetricSpec(
    "rlix_preemptions_total",
    COUNTER,
    "Engines (DP ranks) of the pipeline put to sleep for a stage; reason: preempted by <cluster id>",
    ("pipeline", "reason"),
)
DONATIONS = MetricSpec(
    "rlix_donations_total",
    COUNTER,
    "Engines (DP ranks) of the pipeline put to sleep for another pipeline's; reason: donated to <pipeline>",
    ("pipeline", "reason"),
)
DECISIONS = MetricSpec("rlix_decisions_total", COUNTER, "Entries of the decision log, by kind", ("kind",))
REQUEST_WAIT = MetricSpec(
    "rlix_request_wait_seconds",
    HISTOGRAM,
    "Time a signal_demand or request_gpus call waited until granted",
    ("pipeline", "op", "priority"),
    WAIT_BUCKETS,
)
RESIZE = MetricSpec(
    "rlix_resize_seconds",
    HISTOGRAM,
    "Duration of the engines' confirmed wakes and sleeps (op: wake, sleep)",
    ("pipeline", "op"),
    SWITCH_BUCKETS,
)
WEIGHT_SYNC = MetricSpec(
    "rlix_weight_sync_seconds",
    HISTOGRAM,
    "Weight syncs into awake engines, where the framework reports them (rlix_plugin.metrics.report_weight_sync)",
    ("pipeline",),
    SWITCH_BUCKETS,
)
CYCLE = MetricSpec(
    "rlix_scheduling_cycle_seconds",
    HISTOGRAM,
    "Duration of a planning pass (plan, validate, start its moves)",
    (),
    CYCLE_BUCKETS,
)

METRICS: tuple[MetricSpec, ...] = (
    GPUS_HELD,
    IDLE_GPUS,
    POOL_GPUS,
    PIPELINES,
    FENCED_PIPELINES,
    BUNDLES_ENTITLED,
    BUNDLES_AWAKE,
    OPEN_DEMAND,
    REMAINING,
    PENDING,
    START_TIME,
    RESTARTS,
    PREEMPTIONS,
    DONATIONS,
    DECISIONS,
    REQUEST_WAIT,
    RESIZE,
    WEIGHT_SYNC,
    CYCLE,
)
#: Metrics computed from the scheduler's snapshot (the rest are counted as things happen).
SNAPSHOT_GAUGES = (
    GPUS_HELD,
    IDLE_GPUS,
    POOL_GPUS,
    PIPELINES,
    FENCED_PIPELINES,
    BUNDLES_ENTITLED,
    BUNDLES_AWAKE,
    OPEN_DEMAND,
    REMAINING,
    PENDING,
)

#: Label values of ``op``.
SIGNAL_DEMAND = "signal_demand"
REQUEST_GPUS = "request_gpus"
WAKE = "wake"
SLEEP = "sleep"

__all__ = [
    "BUNDLES_AWAKE",
    "BUNDLES_ENTITLED",
    "COUNTER",
    "CYCLE",
    "DECISIONS",
    "DONATIONS",
    "FENCED_PIPELINES",
    "GAUGE",
    "GPUS_HELD",
    "HISTOGRAM",
    "IDLE_GPUS",
    "METRICS",
    "OPEN_DEMAND",
    "PENDING",
    "PIPELINES",
    "POOL_GPUS",
    "PREEMPTIONS",
    "REMAINING",
    "REQUEST_GPUS",
    "REQUEST_WAIT",
    "RESIZE",
    "RESTARTS",
    "SIGNAL_DEMAND",
    "SLEEP",
    "SNAPSHOT_GAUGES",
    "START_TIME",
    "WAKE",
    "WEIGHT_SYNC",
    "MetricSpec",
]
