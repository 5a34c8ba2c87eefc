"""``rlix-plugin simulate SCENARIO``: the scenario's pipelines in virtual time, on the live
scheduler's core, under several policies; which policy to use and what it does to each job.

Prints a table per policy (makespan, speedup over a static partition, job completion times, GPU
busy and useful fractions, switches, GPU-seconds lost to switching) and the recommendation, or
with ``--json`` one JSON object (:meth:`rlix_plugin.simulate.compare.Comparison.to_json`).
``--timeline FILE.png`` draws GPU ownership and use over time for each policy. Exit status 0, 1
when a simulated run stalled, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

#: Pipelines listed one by one in the text output; beyond that, --json has them all.
_LIST_PIPELINES = 24


def run_simulate(args: argparse.Namespace) -> int:
    from rlix_plugin.hookspecs import InvalidRequestError
    from rlix_plugin.scenario import BUNDLED_PACKAGE, load_scenario
    from rlix_plugin.simulate.compare import check_policies, compare

    from .demo import _require, _writable

    policies = check_policies(args.policy or ())
    if isinstance(args.seed, bool) or args.seed < 0:
        raise InvalidRequestError(f"--seed must be an integer >= 0, got {args.seed!r}")
    if args.timeline:
        _require("matplotlib", "--timeline")
        _writable(args.timeline, "--timeline")
    scenario = load_scenario(args.scenario, packages=(BUNDLED_PACKAGE, SIMULATED_PACKAGE))
    if args.seed:
        scenario = scenario.with_seed(args.seed)
    progress = _Progress.open(scenario, policies)
    try:
        result = compare(
            scenario,
            policies,
            timeline=bool(args.timeline),
            on_rollout=progress.advance if progress is not None else None,
        )
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2), flush=True)
    else:
        print(report(result.to_json(), scenario.description))
    if args.timeline:
        from rlix_plugin.simulate.timeline import draw_timelines

        try:
            draw_timelines(result, args.timeline)
        except Exception as exc:
            print(f"rlix-plugin: error: could not write {args.timeline}: {exc}", file=sys.stderr)
            return 1
        if not args.json:
            print(f"timeline: {args.timeline}")
    return 0


SIMULATED_PACKAGE = "rlix_plugin.simulate"


def report(data: dict[str, Any], description: str = "") -> str:
    """The text form of a comparison's JSON."""
    lines = [
        f"{data['scenario']}: {data['pipelines']} pipelines, {data['gpus']} GPUs, {data['rollouts']} rollouts"
        + (f" -- {description}" if description else "")
    ]
    seconds = _seconds(data["lower_bound_s"])
    lines.append(
        f"lower bound on the makespan: {seconds(data['lower_bound_s'])} s (all work over the pool: "
        f"{seconds(data['pool_bound_s'])} s; the longest pipeline alone: {seconds(data['pipeline_bound_s'])} s)"
    )
    header = (
        "policy",
        "makespan s",
        "speedup",
        "mean JCT",
        "worst JCT",
        "GPU busy",
        "useful",
        "switches/rollout",
        "switching GPU-s",
    )
    rows: list[tuple[str, ...]] = [header]
    policies = data["policies"]
    static = policies.get("static")
    for policy, figures in policies.items():
        speed = data["speedup"].get(policy)
        rows.append(
            (
                policy,
                seconds(figures["makespan_s"]),
                f"{speed['makespan']:.2f}x" if speed else ("1.00x" if policy == "static" else "-"),
                f"{speed['mean_jct']:.2f}x"
                if speed and speed["mean_jct"]
                else ("1.00x" if policy == "static" else "-"),
                f"{speed['worst_jct_ratio']:.3f} ({speed['worst_pipeline']})"
                if speed and speed["worst_jct_ratio"]
                else "-",
                f"{figures['gpu_busy_fraction']:.1%}",
                f"{figures['gpu_useful_fraction']:.1%}",
                f"{figures['switches_per_rollout']:.1f}",
                f"{figures['switch_gpu_s']:,.0f}",
            )
        )
    lines.append("")
    lines.extend(_table(rows))
    lines.append(
        "speedup and mean JCT: static over the policy (above 1 is faster); worst JCT: the policy's JCT over "
        "static, for the pipeline it slows most"
    )
    names = list(next(iter(policies.values()))["jct_s"]) if policies else []
    if names and len(names) <= _LIST_PIPELINES:
        rows = [("pipeline", *[f"{p} JCT s" for p in policies])]
        for name in names:
            rows.append(
                (name, *[_jct(policies[p]["jct_s"][name], name in policies[p]["stopped"], seconds) for p in policies])
            )
        lines.append("")
        lines.extend(_table(rows))
    best = data.get("best_policy")
    lines.append("")
    if best is None:
        lines.append("no recommendation: no sharing policy was simulated")
    elif best == "static":
        lines.append("use a static partition: every sharing policy simulated slows some pipeline by more than 10%")
    elif static is None:
        lines.append(f"shortest makespan: {best} (add --policy static to compare with dedicated slices)")
    else:
        speed = data["speedup"][best]
        lines.append(
            f"use {best}: makespan {speed['makespan']:.2f}x faster than static, mean JCT {speed['mean_jct']:.2f}x; "
            f"no pipeline slower than {speed['worst_jct_ratio']:.2f}x its static JCT"
        )
        bound = data["lower_bound_s"]
        if bound and static["makespan_s"]:
            lines.append(
                f"no policy can beat {static['makespan_s'] / bound:.2f}x faster than static here (the lower bound)"
            )
    return "\n".join(lines)


def _seconds(scale: float) -> Any:
    """A formatter for seconds of the size of ``scale``: whole seconds for long runs."""
    digits = 0 if scale >= 100 else 2
    return lambda value: f"{value:,.{digits}f}"


def _jct(value: float | None, stopped: bool, seconds: Any) -> str:
    if value is None:
        return "-"
    return seconds(value) + (" (stopped)" if stopped else "")


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(widths[i]) for i, cell in enumerate(row) if i]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


class _Progress:
    """A progress bar per policy on stderr (rollouts accounted for), when stderr is a terminal
    and rich is installed."""

    def __init__(self, bar: Any, tasks: dict[str, Any]) -> None:
        self.bar = bar
        self.tasks = tasks

    @classmethod
    def open(cls, scenario: Any, policies: list[str]) -> _Progress | None:
        import importlib.util

        if not sys.stderr.isatty() or importlib.util.find_spec("rich") is None:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        total = sum(p.rollouts for p in scenario.pipelines)
        bar = Progress(
            TextColumn("{task.description:>14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rollouts"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        bar.start()
        return cls(bar, {policy: bar.add_task(policy, total=total) for policy in policies})

    def advance(self, policy: str, rollouts: int) -> None:
        self.bar.advance(self.tasks[policy], rollouts)

    def close(self) -> None:
        self.bar.stop()


def add_parser(commands: Any) -> None:
    from rlix_plugin.simulate.compare import CHOICES

    parser = commands.add_parser(
        "simulate",
        help="simulate a scenario in virtual time and compare sharing policies",
        description="Simulate a scenario's pipelines in virtual time on the live scheduler's core, under a static "
        "partition and each sharing policy; report makespan, job completion times, GPU use and "
        "switching, and which policy to use.",
    )
    parser.add_argument("scenario", help="a scenario TOML file, or a bundled scenario name (e.g. cluster_64x1024)")
    parser.add_argument(
        "--policy",
        action="append",
        choices=CHOICES,
        metavar="NAME",
        help=f"simulate only these (repeatable; default: all of {', '.join(CHOICES)})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--timeline", metavar="FILE.png", help="draw GPU ownership and use over time per policy")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="another draw of the same workload: every pipeline's seed plus N (default 0)",
    )
    parser.set_defaults(run=run_simulate)


__all__ = ["add_parser", "report", "run_simulate"]
