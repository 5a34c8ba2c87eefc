"""Simulation throughput: wall seconds this machine takes to simulate a cluster scenario.

    python benchmarks/simulate.py --json                 # 64 pipelines x 1024 GPUs x 50 steps
    python benchmarks/simulate.py --scale 4 --json       # 256 pipelines x 8192 GPUs

Workload: the bundled ``cluster_64x1024`` scenario (docs/simulate.md), simulated under the default
policy. ``--scale K`` multiplies every pipeline group's replicas by K and the pool by 2K (each
pipeline's training slice doubles: 256 pipelines x 32 GPUs = 8192 at K = 4), the steps and the
per-step work unchanged.

Figures: ``wall_s`` (this machine's seconds for the whole run), ``virtual_makespan_s``, ``events``,
``planning_passes``, ``rollouts`` (all pipelines' steps), ``events_per_s``. Target (64 x 1024):
``wall_s`` <= 60.

``--until S`` stops after S virtual seconds (for runs too long to finish): the figures are then
``virtual_s``, ``rollouts`` done of ``rollouts_total``, ``wall_s`` so far and
``projected_wall_s`` = ``wall_s`` x ``rollouts_total`` / ``rollouts`` (a projection, not a
measurement: later steps may cost more or less per rollout than the first ones).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from importlib import resources

sys.path.insert(0, os.path.dirname(__file__))

from _stats import emit

from rlix_plugin.scenario import Scenario, parse_scenario
from rlix_plugin.scheduler.policy import DEFAULT_POLICY, POLICIES
from rlix_plugin.simulate.run import SimulationStalled, simulate

SCENARIO = "cluster_64x1024"


def scenario_text(scale: int) -> str:
    text = resources.files("rlix_plugin.simulate").joinpath(f"scenarios/{SCENARIO}.toml").read_text()
    if scale == 1:
        return text

    def times(factor: int):  # type: ignore[no-untyped-def]
        return lambda m: f"{m.group(1)}{int(m.group(2)) * factor}"

    text = re.sub(r"(?m)^(gpus = )(\d+)", times(2 * scale), text)
    text = re.sub(r"(?m)^(replicas = )(\d+)", times(scale), text)
    return re.sub(r"(?m)^(train_gpus = )(\d+)", times(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=1, help="replicas x K, pool x 2K (default 1: 64 x 1024)")
    parser.add_argument("--policy", choices=sorted(POLICIES), default=DEFAULT_POLICY)
    parser.add_argument("--until", type=float, default=None, metavar="S", help="stop after S virtual seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.scale < 1:
        parser.error(f"--scale must be >= 1, got {args.scale}")
    scenario = parse_scenario(scenario_text(args.scale), f"{SCENARIO} x{args.scale}")
    if args.until is not None:
        partial(scenario, args.scale, args.policy, args.until, args.json)
        return
    run = simulate(scenario, args.policy)
    emit(
        {
            "scenario": SCENARIO,
            "scale": args.scale,
            "pipelines": len(scenario.pipelines),
            "gpus": scenario.gpus,
            "policy": args.policy,
            "rollouts": run.rollouts,
            "wall_s": round(run.cpu_s, 2),
            "virtual_makespan_s": round(run.wall_s, 1),
            "events": run.events,
            "planning_passes": run.passes,
            "events_per_s": round(run.events / run.cpu_s) if run.cpu_s else None,
        },
        args.json,
    )


def partial(scenario: Scenario, scale: int, policy: str, until: float, as_json: bool) -> None:
    done = [0]

    def counted(n: int) -> None:
        done[0] += n

    started = time.perf_counter()
    try:
        run = simulate(scenario, policy, until_s=until, on_rollout=counted)
        virtual = run.wall_s
    except SimulationStalled:
        virtual = until
    wall = time.perf_counter() - started
    total = sum(p.rollouts for p in scenario.pipelines)
    emit(
        {
            "scenario": SCENARIO,
            "scale": scale,
            "pipelines": len(scenario.pipelines),
            "gpus": scenario.gpus,
            "policy": policy,
            "virtual_s": round(virtual, 1),
            "rollouts": done[0],
            "rollouts_total": total,
            "wall_s": round(wall, 2),
            "projected_wall_s": round(wall * total / done[0], 1) if done[0] else None,
        },
        as_json,
    )


if __name__ == "__main__":
    main()
