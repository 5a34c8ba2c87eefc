"""What the operator's view costs the scheduler.

    python benchmarks/operator_view.py --pipelines 64 --gpus 256 --json

Scenario: ``--pipelines`` pipelines on ``--gpus`` GPUs (8 per node), each with a generation
cluster over the whole pool (TP 1) and open demand, the workers spread evenly among them. Figures,
medians of ``--repeat`` runs of ``--calls`` calls each:

* ``journal_progress_ns`` / ``journal_change_ns``: the decision log's observer on a progress
  report (the hot one: up to 20 per second per pipeline reach the scheduler) and on any other
  change (a request or release: it compares open demand and stages with what it saw);
* ``decision_ns``: recording one decision and counting it into the metrics;
* ``snapshot_ms`` / ``gauges_ms``: one snapshot of the state, and the gauges read off it (what a
  scrape of the local endpoint or one refresh of Ray's gauges costs, on the scheduler's loop);
* ``plan_ms`` for scale: one planning pass of the same state.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _stats import emit, median

from rlix_plugin.hookspecs import ACTOR_INFER, ClusterSpec, Priority
from rlix_plugin.metrics.values import Recorder, Tally, snapshot_gauges
from rlix_plugin.progress import PROGRESS, ProgressReport
from rlix_plugin.scheduler.journal import Journal
from rlix_plugin.scheduler.plan import IDLE, Move, Plan
from rlix_plugin.scheduler.planner import plan_cycle
from rlix_plugin.scheduler.report import snapshot
from rlix_plugin.scheduler.state import ResizeOutcome, SchedulerState
from rlix_plugin.scheduler.topology import PoolTopology

STEP = 512


def build_state(pipelines: int, gpus: int) -> SchedulerState:
    state = SchedulerState(PoolTopology(gpus, 8), clock=lambda: 0.0)
    infer = ClusterSpec(1, tuple(range(gpus)))
    for i in range(pipelines):
        pid = f"p{i}"
        state.register(pid, {ACTOR_INFER: infer})
        state.admit(pid)
        state.request(pid, ACTOR_INFER, Priority.GENERATION, STEP)
    wakes = {f"p{i}": set(range(i, gpus, pipelines)) for i in range(pipelines)}
    state.start(Plan([Move(IDLE, wakes={p: r for p, r in wakes.items() if r})]))
    for action in state.take_actions():
        state.resized(action, ResizeOutcome(action.add))
    state.take_events()
    for i in range(pipelines):
        state.apply_progress(ProgressReport(PROGRESS, f"p{i}", 0, "full", None, STEP, i % STEP, 0))
    return state


def per_call_ns(fn, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=256)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    state = build_state(args.pipelines, args.gpus)
    journal = Journal(state, clock=lambda: 0.0, capacity=10_000)
    recorder = Recorder(Tally())
    journal.log.listeners.append(recorder.decided)
    journal.changed("register", None)  # the first sight of every pipeline and its demand
    runs: dict[str, list[float]] = {
        k: []
        for k in ("journal_progress_ns", "journal_change_ns", "decision_ns", "snapshot_ms", "gauges_ms", "plan_ms")
    }
    snap = snapshot(state)
    for _ in range(args.repeat):
        runs["journal_progress_ns"].append(per_call_ns(lambda: journal.changed("progress", "p1"), args.calls))
        runs["journal_change_ns"].append(per_call_ns(lambda: journal.changed("request", None), args.calls))
        runs["decision_ns"].append(
            per_call_ns(lambda: journal._engines("donate", "p1", (1,), "donated to p2", {"to": "p2"}), args.calls)
        )
        runs["snapshot_ms"].append(per_call_ns(lambda: snapshot(state), 20) / 1e6)
        runs["gauges_ms"].append(per_call_ns(lambda: snapshot_gauges(snap), 20) / 1e6)
        runs["plan_ms"].append(per_call_ns(lambda: plan_cycle(state), 5) / 1e6)
    result = {"pipelines": args.pipelines, "gpus": args.gpus, "repeat": args.repeat}
    result.update({f"{k}_median": round(median(v), 4 if k.endswith("ms") else 1) for k, v in runs.items()})
    emit(result, args.json)


if __name__ == "__main__":
    main()
