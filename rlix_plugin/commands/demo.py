"""``rlix-plugin demo`` and ``rlix-plugin run SCENARIO``: pipelines of the reference framework
learning while they share a logical GPU pool.

``demo`` runs the bundled seed scenario (4 GPUs, two pipelines); ``run`` runs any scenario file
(or bundled scenario by name). Both print live progress and a final table, or with ``--json`` one
JSON object; exit status 0 when every pipeline finished every rollout, 1 when the run failed (the
watchdog stopped a stalled pipeline, a pipeline failed, or the run timed out), 2 for bad input.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile
from typing import Any


def _require(module: str, what: str) -> None:
    from rlix_plugin.hookspecs import RlixError

    if importlib.util.find_spec(module) is None:
        raise RlixError(f'{what} needs the {module!r} package: pip install "rlix-plugin[demo]"')


def _writable(path: str, option: str) -> None:
    """Refuse before the run an output file that cannot be written (the run's JSON must not be
    lost to a typo in a path)."""
    from rlix_plugin.hookspecs import InvalidRequestError

    target = pathlib.Path(path)
    folder = target.parent if str(target.parent) else pathlib.Path(".")
    problem = None
    if target.is_dir() or not folder.is_dir():
        problem = "no such folder, or a folder of that name"
    else:
        try:  # a real file: os.access says yes to root everywhere, /proc included
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".rlix-probe-"):
                pass
        except OSError as exc:
            problem = exc.strerror or type(exc).__name__
    if problem is not None:
        raise InvalidRequestError(f"{option} {path!r}: cannot write there ({problem})")


def _execute(args: argparse.Namespace, scenario_ref: str) -> int:
    from rlix_plugin import arguments as check

    check.timeout(args.timeout, "--timeout")
    check.timeout(args.stall_timeout, "--stall-timeout")
    check.timeout(args.time_scale, "--time-scale")
    _require("torch", "the reference framework")
    if args.trace:
        _require("perfetto", "--trace")
        _writable(args.trace, "--trace")
    if args.timeline:
        _require("matplotlib", "--timeline")
        _writable(args.timeline, "--timeline")
    from rlix_plugin.reference.harness.runner import RunOptions, run_scenario
    from rlix_plugin.scenario import load_scenario

    scenario = load_scenario(scenario_ref)
    options = RunOptions(
        backend=args.backend,
        time_scale=args.time_scale,
        stall_timeout_s=args.stall_timeout,
        timeout_s=args.timeout,
        measure_static=not args.no_static,
        policy=args.policy,
    )
    console: Any = None
    progress = baseline = None
    if not args.json:
        _require("rich", "the progress display")
        from rich.console import Console

        from rlix_plugin.reference.output.display import LiveProgress

        console = Console(stderr=True)
        console.print(
            f"[bold]{scenario.name}[/bold]: {scenario.description or scenario.source} "
            f"({scenario.gpus} GPUs, {args.backend} backend)"
        )
        progress = LiveProgress(console)
        baseline = _Announce(console, LiveProgress(console))
    result = run_scenario(scenario, options, progress, baseline_progress=baseline)
    if args.json:  # first: nothing after the run may lose it
        print(json.dumps(result.to_json(), indent=2), flush=True)
    outputs_failed = False
    for path, write in ((args.trace, _write_trace), (args.timeline, _draw_timeline)):
        if path:
            try:
                write(result, path, scenario, args)
            except Exception as exc:
                print(f"rlix-plugin: error: could not write {path}: {exc}", file=sys.stderr)
                outputs_failed = True
    if not args.json:
        from rich.console import Console

        from rlix_plugin.reference.output.display import result_table

        Console().print(result_table(result))
        for path, what in ((args.trace, "trace (open at ui.perfetto.dev)"), (args.timeline, "timeline")):
            if path:
                console.print(f"{what}: {path}")
    if not result.ok:
        print(result.diagnostic or "run failed", file=sys.stderr)
        for error in result.errors:
            print(f"error: {error}", file=sys.stderr)
    return 0 if result.ok and not outputs_failed else 1


def _write_trace(result: Any, path: str, scenario: Any, args: argparse.Namespace) -> None:
    from rlix_plugin.reference.output.trace import write_trace

    del scenario, args  # same signature as _draw_timeline
    write_trace(result.recorder, path)


def _draw_timeline(result: Any, path: str, scenario: Any, args: argparse.Namespace) -> None:
    from rlix_plugin.reference.output.timeline import draw_timeline

    draw_timeline(result.recorder, path, title=f"{scenario.name}: GPU ownership ({args.backend} backend)")


class _Announce:
    """Say that the baseline starts, then show its progress like the main run's."""

    def __init__(self, console: Any, inner: Any) -> None:
        self.console = console
        self.inner = inner

    def start(self, statuses: Any) -> None:
        self.console.print("[dim]baseline: the same work on a statically partitioned pool[/dim]")
        self.inner.start(statuses)

    def stop(self) -> None:
        self.inner.stop()


def run_demo(args: argparse.Namespace) -> int:
    return _execute(args, args.scenario)


def run_file(args: argparse.Namespace) -> int:
    return _execute(args, args.scenario)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: embedded scheduler (default); ray: the shared scheduler actor",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--trace", metavar="FILE", help="write a Perfetto trace (ui.perfetto.dev)")
    parser.add_argument("--timeline", metavar="FILE.png", help="draw the GPU ownership timeline")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=20.0,
        metavar="S",
        help="stop when a pipeline has open demand and no engine for S seconds (default 20)",
    )
    parser.add_argument(
        "--time-scale", type=float, default=1.0, metavar="X", help="multiply every scenario duration by X (default 1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="bound on the whole run (default 600)"
    )
    from rlix_plugin.scheduler.policy import POLICIES

    parser.add_argument(
        "--policy",
        choices=sorted(POLICIES),
        default=None,
        help="sharing policy (default: the scenario's, else finish_first)",
    )
    parser.add_argument(
        "--no-static",
        action="store_true",
        help="skip the static-partition baseline run (static_partition_s is then null)",
    )


def add_parser(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="two pipelines learn while sharing 4 GPUs (the seed scenario)",
        description="Run a bundled scenario of the reference framework on the embedded scheduler.",
    )
    demo.add_argument("--scenario", default="seed", help="bundled scenario name (default: seed)")
    _options(demo)
    demo.set_defaults(run=run_demo)
    run = commands.add_parser("run", help="run a scenario file", description="Run a scenario TOML file.")
    run.add_argument("scenario", help="path to a scenario TOML file, or a bundled scenario name")
    _options(run)
    run.set_defaults(run=run_file)
