"""Build ``docs/grafana/rlix.json``, the Grafana dashboard of rlix's metrics, with Grafana's own
schema builders (``pip install grafana-foundation-sdk``, in the ``test`` extra):

    python docs/grafana/build.py > docs/grafana/rlix.json

Every query matches a metric by ``{__name__=~"(ray_)?rlix_..."}``: Ray's metrics pipeline names
rlix's metrics ``ray_rlix_...`` (Ray adds the prefix), the local backend's endpoint ``rlix_...``,
so one dashboard serves both. ``tests/operator/test_prometheus.py`` checks that the file is what
this script builds, and evaluates every query with a real Prometheus.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DataSourceRef
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

UID = "rlix-pool"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def metric(name: str, matchers: str = "") -> str:
    """A selector of ``rlix_<name>`` under either name (see the module docstring)."""
    return '{__name__=~"(ray_)?rlix_' + name + '"' + (f", {matchers}" if matchers else "") + "}"


def quantile(q: float, name: str, by: str = "", matchers: str = "") -> str:
    """The ``q`` quantile of histogram ``name`` per ``by`` labels, over the rate interval."""
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric(name + '_bucket', matchers)}[$__rate_interval])))"


def wait_buckets(op: str) -> str:
    """The heatmap of one call's waits: its bucket counts per interval."""
    selector = metric("request_wait_seconds_bucket", f'op="{op}"')
    return f"sum by (le) (increase({selector}[$__rate_interval]))"


@dataclass
class Query:
    expr: str
    legend: str = "__auto"
    heatmap: bool = False


@dataclass
class Panel:
    title: str
    kind: str  # timeseries, heatmap or stat
    queries: list[Query]
    description: str
    unit: str = "none"
    stacked: bool = False
    width: int = 12
    height: int = 8
    extra: dict[str, object] = field(default_factory=dict)


PANELS = [
    Panel(
        "Pipelines",
        "stat",
        [Query(f"max({metric('pipelines')})", "pipelines")],
        "Registered pipelines.",
        width=4,
        height=4,
    ),
    Panel("Idle GPUs", "stat", [Query(f"max({metric('idle_gpus')})", "idle")], "GPUs nobody holds.", width=4, height=4),
    Panel(
        "Pending requests",
        "stat",
        [Query(f"sum({metric('pending_requests')})", "pending")],
        "Requests waiting to be granted, every priority.",
        width=4,
        height=4,
    ),
    Panel(
        "Fenced pipelines",
        "stat",
        [Query(f"max({metric('fenced_pipelines')})", "fenced")],
        "Pipelines fenced after a failed resize (or as unresponsive), not yet reclaimed.",
        width=4,
        height=4,
    ),
    Panel(
        "Scheduler restarts",
        "stat",
        [Query(f"max({metric('scheduler_restarts_total')}) or vector(0)", "restarts")],
        "Schedulers started before the running one on this Ray cluster.",
        width=4,
        height=4,
    ),
    Panel(
        "Decisions per minute",
        "stat",
        [Query(f"sum(rate({metric('decisions_total')}[$__rate_interval])) * 60", "decisions")],
        "Entries of the decision log per minute (rlix-plugin events lists them).",
        width=4,
        height=4,
    ),
    Panel(
        "Pool occupancy by pipeline",
        "timeseries",
        [
            Query(f"sum by (pipeline) ({metric('gpus_held')})", "{{pipeline}}"),
            Query(f"max({metric('idle_gpus')})", "idle"),
        ],
        "GPUs each pipeline holds (engines awake or switching, and its stages), and the idle ones.",
        stacked=True,
    ),
    Panel(
        "GPUs by state",
        "timeseries",
        [Query(f"sum by (state) ({metric('gpus_held')})", "{{state}}")],
        "Held GPUs by what they do: awake, waking, falling_asleep (engines), training (a stage), "
        "reserved (kept for a stage about to be granted).",
        stacked=True,
    ),
    Panel(
        "Entitled vs awake generation bundles",
        "timeseries",
        [
            Query(f"sum by (pipeline) ({metric('generation_bundles_entitled')})", "{{pipeline}} entitled"),
            Query(f"sum by (pipeline) ({metric('generation_bundles_awake')})", "{{pipeline}} awake"),
        ],
        "The planner's target per pipeline at its last pass, and the engines actually awake.",
    ),
    Panel(
        "Remaining samples",
        "timeseries",
        [
            Query(f"sum by (pipeline) ({metric('remaining_samples')})", "{{pipeline}}"),
            Query(f"sum by (pipeline) ({metric('open_demand_samples')})", "{{pipeline}} step target"),
        ],
        "Rollout work left per pipeline (what the sharing policy divides the GPUs by), and the open "
        "demand's step target.",
    ),
    Panel(
        "Pending requests by priority",
        "timeseries",
        [Query(f"sum by (priority) ({metric('pending_requests')})", "priority {{priority}}")],
        "Requests waiting to be granted, by priority (0 init ... 6 generation).",
        stacked=True,
    ),
    Panel(
        "Wait until granted (p50, p99)",
        "timeseries",
        [
            Query(quantile(0.5, "request_wait_seconds", "op"), "{{op}} p50"),
            Query(quantile(0.99, "request_wait_seconds", "op"), "{{op}} p99"),
        ],
        "How long signal_demand and request_gpus calls waited for their grant.",
        unit="s",
    ),
    Panel(
        "signal_demand wait",
        "heatmap",
        [Query(wait_buckets("signal_demand"), "{{le}}", heatmap=True)],
        "Distribution of the waits of signal_demand (a rollout's first engine).",
        unit="s",
    ),
    Panel(
        "request_gpus wait",
        "heatmap",
        [Query(wait_buckets("request_gpus"), "{{le}}", heatmap=True)],
        "Distribution of the waits of request_gpus (stages and generation).",
        unit="s",
    ),
    Panel(
        "Preemptions by reason",
        "timeseries",
        [Query(f"sum by (reason) (increase({metric('preemptions_total')}[$__rate_interval]))", "{{reason}}")],
        "Engines put to sleep for a stage, by the planner's reason (preempted by <cluster id>).",
    ),
    Panel(
        "Donations by reason",
        "timeseries",
        [Query(f"sum by (reason) (increase({metric('donations_total')}[$__rate_interval]))", "{{reason}}")],
        "Engines put to sleep for another pipeline's, by the planner's reason (donated to <pipeline>).",
    ),
    Panel(
        "Switch costs: wake and sleep (p90)",
        "timeseries",
        [Query(quantile(0.9, "resize_seconds", "pipeline, op"), "{{pipeline}} {{op}}")],
        "How long the engines took to wake and to fall asleep, per pipeline.",
        unit="s",
    ),
    Panel(
        "Switch costs: weight sync (p90)",
        "timeseries",
        [Query(quantile(0.9, "weight_sync_seconds", "pipeline"), "{{pipeline}}")],
        "Weight syncs into awake engines, where the framework reports them.",
        unit="s",
    ),
    Panel(
        "GPU-seconds switching",
        "timeseries",
        [Query(f"sum by (pipeline) (rate({metric('resize_seconds_sum')}[$__rate_interval]))", "{{pipeline}}")],
        "Engine-seconds per second spent waking and falling asleep (engines hold their GPUs meanwhile).",
    ),
    Panel(
        "Planning pass duration (p99)",
        "timeseries",
        [Query(quantile(0.99, "scheduling_cycle_seconds"), "p99")],
        "How long one planning pass takes: plan, validate, start its moves.",
        unit="s",
    ),
]


def target(query: Query, ref: str) -> prometheus.Dataquery:
    built = prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref).datasource(DATASOURCE)
    if query.heatmap:
        built = built.format(PromQueryFormat.HEATMAP)
    return built.range()


def panel(spec: Panel) -> object:
    builder: object
    if spec.kind == "timeseries":
        builder = (
            timeseries.Panel()
            .fill_opacity(30 if spec.stacked else 10)
            .legend(
                common_builders.VizLegendOptions()
                .display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM)
                .show_legend(True)
            )
            .tooltip(
                common_builders.VizTooltipOptions()
                .mode(common.TooltipDisplayMode.MULTI)
                .sort(common.SortOrder.DESCENDING)
            )
        )
        if spec.stacked:
            builder = builder.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    elif spec.kind == "heatmap":
        builder = heatmap.Panel().calculate(False)
    else:
        builder = (
            stat.Panel()
            .graph_mode(common.BigValueGraphMode.AREA)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        )
    builder = builder.title(spec.title).description(spec.description).unit(spec.unit).datasource(DATASOURCE)
    builder = builder.span(spec.width).height(spec.height)
    for index, query in enumerate(spec.queries):
        builder = builder.with_target(target(query, chr(ord("A") + index)))
    return builder


def build() -> dict[str, object]:
    board = (
        dashboard.Dashboard("rlix: GPU pool")
        .uid(UID)
        .description(
            "Who holds which GPU of the shared pool, what the planner aims at, waits, "
            "preemptions and switch costs (rlix-plugin's metrics; see docs/operators.md)."
        )
        .tags(["rlix", "ray", "gpu"])
        .editable()
        .time("now-30m", "now")
        .refresh("10s")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    for spec in PANELS:
        board = board.with_panel(panel(spec))
    return json.loads(JSONEncoder(sort_keys=True).encode(board.build()))


if __name__ == "__main__":
    json.dump(build(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
