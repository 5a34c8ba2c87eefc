"""Shared pool vs. lower bound vs. static partitioning, for the bundled scenarios.

    python benchmarks/sharing.py --json [--scenario seed --scenario long_tail] [--repeat 3]

Each scenario runs on the embedded (local) scheduler with the reference framework: once shared
(every pipeline on the whole pool through the hooks) and once statically partitioned (the pool
split evenly into dedicated slices, same work). Per scenario: ``wall_s`` (shared, median over
``--repeat``), ``lower_bound_s`` (max of total GPU-seconds / GPUs and the longest single pipeline
alone on the pool), ``static_partition_s`` (median), ``shared_over_bound`` and
``static_over_shared``, and the GPU busy fraction of the shared run. The goal: shared within
1.25x the lower bound, and faster than static partitioning on long-tail scenarios.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _stats import emit, median  # noqa: E402

from rlix_plugin.reference.runner import RunOptions, run_scenario  # noqa: E402
from rlix_plugin.reference.scenario import bundled_scenario, bundled_scenarios  # noqa: E402


def measure(name: str, repeat: int, time_scale: float) -> dict[str, object]:
    scenario = bundled_scenario(name)
    walls, statics, busy = [], [], []
    bound = 0.0
    for _ in range(repeat):
        result = run_scenario(scenario, RunOptions(time_scale=time_scale, measure_static=True))
        if not result.ok or result.static_partition_s is None:
            raise SystemExit(f"scenario {name} failed: {result.errors or result.diagnostic}")
        walls.append(result.wall_s)
        statics.append(result.static_partition_s)
        busy.append(result.gpu_busy_fraction)
        bound = result.lower_bound_s
    wall, static = median(walls), median(statics)
    return {
        "pipelines": len(scenario.pipelines),
        "gpus": scenario.gpus,
        "wall_s": round(wall, 2),
        "lower_bound_s": round(bound, 2),
        "static_partition_s": round(static, 2),
        "shared_over_bound": round(wall / bound, 3),
        "static_over_shared": round(static / wall, 3),
        "gpu_busy_fraction": round(median(busy), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", help="bundled scenario (default: all)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    names = args.scenario or bundled_scenarios()
    emit(
        {
            "repeat": args.repeat,
            "time_scale": args.time_scale,
            "scenarios": {name: measure(name, args.repeat, args.time_scale) for name in names},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
