"""Shared pool vs. static partitioning, for every bundled scenario, at three switch-cost levels.

    python benchmarks/sharing.py --json [--scenario seed ...] [--repeat 3] [--costs 0,1,3]

Each scenario runs live on the embedded (local) scheduler with the reference framework, at each
cost level (its wake / sleep / sync seconds times 0, 1 and 3): once shared under each policy
(``finish_first``, the default, and rlix's ``gap_ratio``), and once statically partitioned (the
pool split evenly into dedicated slices, same work, same switch costs: a pipeline's training
still puts its own engines to sleep). Runs of one repeat are interleaved, so shared and static
see the same machine load; figures are medians over ``--repeat``.

Per scenario and cost level: ``static_s``; ``lower_bound_s`` (max of total GPU-seconds / GPUs and
the longest single pipeline alone on the pool, switching free); per policy ``wall_s``,
``over_static`` (wall / static, below 1 is faster), ``over_bound``, ``gpu_busy``,
``switches_per_rollout`` (engine wakes and sleeps per rollout), ``switch_gpu_s`` (GPU-seconds
engines spent waking, falling asleep or re-syncing) and, per scenario, ``forced_switches_per_rollout``:
the minimum stage preemption forces (each rollout's training puts the engines on its GPUs to
sleep and they wake again after it: 2 x the generation bundles overlapping its stage GPUs).

Targets: shared <= 1.02 x static everywhere; shared >= 1.25 x faster than static on ``long_tail``
and ``three_tp2`` at their own costs; shared <= 1.15 x the bound at zero cost; switches per rollout
<= 2 x the forced minimum.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from _stats import emit, median

from rlix_plugin.reference.harness.runner import RunOptions, execute
from rlix_plugin.scenario import Scenario, bundled_scenario, bundled_scenarios
from rlix_plugin.scenario.static import static_partition
from rlix_plugin.scenario.workload import lower_bound
from rlix_plugin.scheduler.policy import POLICIES


def forced_switches_per_rollout(scenario: Scenario) -> float:
    """2 x generation bundles on each pipeline's stage GPUs, averaged over rollouts."""
    total = rollouts = 0
    for pipeline in scenario.pipelines:
        stage = set(pipeline.train_gpus)
        overlapping = sum(1 for bundle in pipeline.bundles() if stage & set(bundle))
        total += 2 * overlapping * pipeline.rollouts
        rollouts += pipeline.rollouts
    return total / rollouts


def _run(scenario: Scenario, policy: str) -> Any:
    result = execute(scenario, RunOptions(policy=policy, stall_timeout_s=30.0))
    if not result.ok:
        raise SystemExit(f"scenario {scenario.name} ({policy}) failed: {result.errors or result.diagnostic}")
    return result


def measure(name: str, factor: float, repeat: int, policies: list[str]) -> dict[str, Any]:
    scenario = bundled_scenario(name).with_switch_costs(factor)
    static = static_partition(scenario)
    bound = lower_bound(scenario).seconds
    statics: list[float] = []
    runs: dict[str, list[Any]] = {p: [] for p in policies}
    for _ in range(repeat):
        statics.append(_run(static, POLICIES["finish_first"].name).wall_s)
        for policy in policies:
            runs[policy].append(_run(scenario, policy))
    static_s = median(statics)
    out: dict[str, Any] = {"static_s": round(static_s, 3), "lower_bound_s": round(bound, 3)}
    for policy, results in runs.items():
        wall = median([r.wall_s for r in results])
        out[policy] = {
            "wall_s": round(wall, 3),
            "over_static": round(wall / static_s, 3),
            "over_bound": round(wall / bound, 3),
            "gpu_busy": round(median([r.gpu_busy_fraction for r in results]), 3),
            "switches_per_rollout": round(median([r.switches_per_rollout for r in results]), 2),
            "switch_gpu_s": round(median([r.switch_gpu_s for r in results]), 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", help="bundled scenario (default: all)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--costs", default="0,1,3", help="switch-cost multipliers (default 0,1,3)")
    parser.add_argument("--policy", action="append", choices=sorted(POLICIES), help="default: every policy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    names = args.scenario or bundled_scenarios()
    factors = [float(x) for x in args.costs.split(",")]
    policies = args.policy or ["finish_first", "gap_ratio"]
    scenarios = {}
    for name in names:
        levels = {f"x{factor:g}": measure(name, factor, args.repeat, policies) for factor in factors}
        scenarios[name] = {
            "forced_switches_per_rollout": forced_switches_per_rollout(bundled_scenario(name)),
            "costs": levels,
        }
    emit({"repeat": args.repeat, "policies": policies, "scenarios": scenarios}, args.json)


if __name__ == "__main__":
    main()
