"""Policies compared on one scenario: what ``rlix-plugin simulate`` reports.

``static`` is the baseline every sharing policy is measured against: the pool split into one
dedicated slice per pipeline, training and rollout colocated in it
(:func:`~rlix_plugin.scenario.static.static_partition`, the live runner's baseline too),
simulated with the same work. The sharing policies (:mod:`rlix_plugin.scheduler.policy`) run
the scenario as written. Every run draws the same samples (the workload is a pure function of
the seeds), so differences come from scheduling alone.

Per policy: makespan (the last pipeline's end), each pipeline's job completion time (JCT, from
its start to its end), GPU busy fraction (GPU-seconds generating or training over makespan x
GPUs) and useful fraction (each engine weighted by its throughput over its peak), switches
(engine wakes and sleeps), GPU-seconds lost to switching (waking, falling asleep, re-syncing).
Speedups are static over the policy: above 1 is faster.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rlix_plugin.hookspecs import InvalidRequestError
from rlix_plugin.scenario import Scenario
from rlix_plugin.scenario.static import static_partition
from rlix_plugin.scenario.workload import LowerBound, lower_bound
from rlix_plugin.scheduler.policy import DEFAULT_POLICY, POLICIES

from .run import SimRun, simulate

STATIC = "static"
#: What ``--policy`` may name, in the order a comparison runs them.
CHOICES = (STATIC, *sorted(POLICIES))
#: A sharing policy must not make any pipeline slower than this many times its static JCT.
JCT_TOLERANCE = 1.1
#: Timeline samples per run.
TIMELINE_SAMPLES = 400


@dataclass
class Comparison:
    scenario: Scenario
    bound: LowerBound
    runs: dict[str, SimRun] = field(default_factory=dict)

    # -- derived figures ------------------------------------------------------------------------------

    def speedup(self, policy: str) -> dict[str, Any] | None:
        """Static over ``policy`` (None without a static run)."""
        static = self.runs.get(STATIC)
        run = self.runs[policy]
        if static is None:
            return None
        ratios = {}
        for name, stats in run.pipelines.items():
            mine, base = stats.jct_s, static.pipelines[name].jct_s
            if mine is not None and base:
                ratios[name] = mine / base
        worst = max(ratios, key=lambda n: (ratios[n], n)) if ratios else None
        return {
            "makespan": static.wall_s / run.wall_s if run.wall_s else None,
            "mean_jct": _mean_jct(static) / _mean_jct(run) if _mean_jct(run) else None,
            "median_jct_ratio": statistics.median(ratios.values()) if ratios else None,
            "worst_jct_ratio": ratios[worst] if worst is not None else None,
            "worst_pipeline": worst,
        }

    def best(self) -> str | None:
        """The sharing policy with the shortest makespan among those that slow no pipeline by
        more than ``JCT_TOLERANCE`` (static when none does)."""
        candidates = []
        for policy in self.runs:
            if policy == STATIC:
                continue
            speed = self.speedup(policy)
            if speed is None or (speed["worst_jct_ratio"] or 0.0) <= JCT_TOLERANCE:
                candidates.append((self.runs[policy].wall_s, policy))
        if candidates:
            return min(candidates)[1]
        return STATIC if STATIC in self.runs else None

    def to_json(self) -> dict[str, Any]:
        bound = self.bound
        out: dict[str, Any] = {
            "scenario": self.scenario.name,
            "gpus": self.scenario.gpus,
            "pipelines": len(self.scenario.pipelines),
            "rollouts": sum(p.rollouts for p in self.scenario.pipelines),
            "lower_bound_s": _r(bound.seconds),
            "pool_bound_s": _r(bound.pool_bound_s),
            "pipeline_bound_s": _r(bound.pipeline_bound_s),
            "policies": {},
            "speedup": {},
            "best_policy": self.best(),
        }
        for policy, run in self.runs.items():
            out["policies"][policy] = {
                "makespan_s": _r(run.wall_s),
                "over_lower_bound": _r(run.wall_s / bound.seconds) if bound.seconds else None,
                "gpu_busy_fraction": _r(run.gpu_busy_fraction, 4),
                "gpu_useful_fraction": _r(run.gpu_useful_fraction, 4),
                "switches": run.switches,
                "switches_per_rollout": _r(run.switches_per_rollout, 2),
                "switch_gpu_s": _r(run.switch_gpu_s),
                "rollouts_completed": run.rollouts,
                "stopped": sorted(n for n, s in run.pipelines.items() if s.stopped),
                "jct_s": {n: _r(s.jct_s) for n, s in run.pipelines.items()},
                "events": run.events,
                "planning_passes": run.passes,
                "cpu_s": _r(run.cpu_s),
            }
            speed = self.speedup(policy)
            if speed is not None and policy != STATIC:
                out["speedup"][policy] = {k: (_r(v) if isinstance(v, float) else v) for k, v in speed.items()}
        return out


def _mean_jct(run: SimRun) -> float:
    values = [s.jct_s for s in run.pipelines.values() if s.jct_s is not None]
    return sum(values) / len(values) if values else 0.0


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def check_policies(policies: Sequence[str]) -> list[str]:
    """``policies`` in run order, duplicates dropped (default: all of :data:`CHOICES`).

    :raises InvalidRequestError: an unknown name, listing the known ones.
    """
    if not policies:
        return list(CHOICES)
    for policy in policies:
        if policy not in CHOICES:
            raise InvalidRequestError(f"unknown policy {policy!r}; known: {', '.join(CHOICES)}")
    return [p for p in CHOICES if p in policies]


def compare(
    scenario: Scenario,
    policies: Sequence[str] = (),
    *,
    timeline: bool = False,
    on_rollout: Callable[[str, int], None] | None = None,
) -> Comparison:
    """Simulate ``scenario`` under each of ``policies`` (default: static and every sharing
    policy). ``on_rollout(policy, n)`` as rollouts are accounted for (a progress display)."""
    chosen = check_policies(policies)
    bound = lower_bound(scenario)
    result = Comparison(scenario, bound)
    step = bound.seconds / TIMELINE_SAMPLES if timeline and bound.seconds > 0 else None
    for policy in chosen:
        tick = (lambda n, p=policy: on_rollout(p, n)) if on_rollout is not None else None
        if policy == STATIC:
            # The policy barely matters on disjoint slices; the live baseline uses the default.
            run = simulate(static_partition(scenario), DEFAULT_POLICY, timeline_step_s=step, on_rollout=tick)
            run = replace(run, policy=STATIC)
        else:
            run = simulate(scenario, policy, timeline_step_s=step, on_rollout=tick)
        result.runs[policy] = run
    return result


__all__ = ["CHOICES", "JCT_TOLERANCE", "STATIC", "Comparison", "check_policies", "compare"]
