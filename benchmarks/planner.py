"""One rebalancing pass of the planner at scale.

    python benchmarks/planner.py --pipelines 64 --gpus 1024 --tp 1 --json

Scenario: 8 GPUs per node; every pipeline's generation cluster maps the whole pool with TP
``--tp``; pipeline 0 holds every generation DP worker and has no demand left (its rollout ended);
the other P-1 pipelines have open demand with remaining drawn uniformly from [1, 512] of a 512
sample step (seed 0). Each repetition plans one cycle from that same state (plan + validation),
and the median is reported.

Figures: ``plan_ms_median`` (plan + validate), ``activations`` (workers woken), ``shrinks``
(workers put to sleep), ``max_share_error_bundles`` (largest |bundles after the plan - ideal
fractional share| among pipelines with demand).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _stats import emit, median

from rlix_plugin.hookspecs import ACTOR_INFER, ClusterSpec, Priority
from rlix_plugin.progress import END, PROGRESS, ProgressReport
from rlix_plugin.scheduler.plan import IDLE, Move, Plan
from rlix_plugin.scheduler.planner import plan_cycle
from rlix_plugin.scheduler.policy import POLICIES
from rlix_plugin.scheduler.state import ResizeOutcome, SchedulerState
from rlix_plugin.scheduler.topology import PoolTopology
from rlix_plugin.scheduler.validation import validate_plan

STEP = 512


def build_state(pipelines: int, gpus: int, tp: int, seed: int = 0) -> SchedulerState:
    rng = random.Random(seed)
    state = SchedulerState(PoolTopology(gpus, 8), clock=lambda: 0.0)
    infer = ClusterSpec(tp, tuple(range(gpus)))
    for i in range(pipelines):
        pid = f"p{i}"
        state.register(pid, {ACTOR_INFER: infer})
        state.admit(pid)
    # Pipeline 0 wakes every worker, then finishes its rollout.
    state.request("p0", ACTOR_INFER, Priority.GENERATION, STEP)
    state.start(Plan([Move(IDLE, wakes={"p0": set(range(gpus // tp))})]))
    for action in state.take_actions():
        state.resized(action, ResizeOutcome(action.add))
    state.apply_progress(ProgressReport(PROGRESS, "p0", 0, "full", None, STEP, STEP, 0))
    state.apply_progress(ProgressReport(END, "p0", 0, "full", None, STEP, STEP, 0))
    for i in range(1, pipelines):
        pid = f"p{i}"
        state.request(pid, ACTOR_INFER, Priority.GENERATION, STEP)
        state.apply_progress(ProgressReport(PROGRESS, pid, 0, "full", None, STEP, STEP - rng.randint(1, STEP), 0))
    return state


def max_share_error(state: SchedulerState, plan: Plan) -> float:
    error = 0.0
    for pid, ideal in plan.ideal.items():
        after = len(state.generation[pid].active) - len(plan.shrinks.get(pid, ())) + len(plan.expands.get(pid, ()))
        error = max(error, abs(after - ideal))
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=1024)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--policy", choices=sorted(POLICIES), default="finish_first")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    state = build_state(args.pipelines, args.gpus, args.tp)
    timings, plan = [], None
    for _ in range(args.repeat):
        start = time.perf_counter()
        plan = plan_cycle(state, args.policy)
        validate_plan(state, plan)
        timings.append((time.perf_counter() - start) * 1e3)
    assert plan is not None
    emit(
        {
            "pipelines": args.pipelines,
            "gpus": args.gpus,
            "tp": args.tp,
            "policy": args.policy,
            "repeat": args.repeat,
            "plan_ms_median": round(median(timings), 3),
            "plan_ms_min": round(min(timings), 3),
            "activations": plan.activations,
            "shrinks": plan.shrink_count,
            "max_share_error_bundles": round(max_share_error(state, plan), 3),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
