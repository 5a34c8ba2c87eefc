"""Reaction time: ``signal_demand`` until at least one generation worker of the pipeline is awake.

    python benchmarks/reaction.py --json                 # in-process (local backend)

Scenario: ``--pipelines`` pipelines (8) share ``2 x pipelines`` GPUs, each generating on all of
them with TP 1; every pipeline has open demand, so the pool is fully allocated. Each trial picks
the next pipeline, releases its generation cluster (its workers sleep and its demand is retired),
lets the others grow into the freed GPUs (background rebalance), then times ``signal_demand``
through the hooks front end: the scheduler must take a bundle from a donor (shrink) and wake one
for the pipeline (expand). The resize callback returns at once, so the figure is the scheduler's
own latency, thread hops included. Target: p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _stats import emit, latency_figures

from rlix_plugin import Hooks, get_plugin_manager, hookimpl
from rlix_plugin.hookspecs import ACTOR_INFER, ClusterSpec


class InstantEngines:
    """Supply side of every pipeline: wakes and sleeps at once."""

    def __init__(self) -> None:
        self.awake: dict[str, set[int]] = {}
        self.shrinks = 0

    @hookimpl
    def rlix_resize_infer(self, pipeline_id, dp_ranks_to_remove, dp_ranks_to_add):
        self.shrinks += bool(dp_ranks_to_remove)
        ranks = self.awake.setdefault(pipeline_id, set())
        ranks.difference_update(dp_ranks_to_remove)
        ranks.update(dp_ranks_to_add)
        return tuple(sorted(ranks))


def run_local(pipelines: int, trials: int) -> dict[str, object]:
    from rlix_plugin.backends.local import LocalScheduler

    gpus = 2 * pipelines
    scheduler = LocalScheduler(gpus, 8)
    pm = get_plugin_manager("local", backend_options={"scheduler": scheduler}, autoload=False)
    engines = InstantEngines()
    pm.register(engines, name="engines")
    hooks = Hooks(pm)
    pids = [f"p{i}" for i in range(pipelines)]
    try:
        for pid in pids:
            hooks.register_pipeline(pipeline_id=pid, clusters={ACTOR_INFER: ClusterSpec(1, tuple(range(gpus)))})
            hooks.signal_demand(pipeline_id=pid, rollout_id=0, step_target=64, timeout_s=10)
        latencies = []
        for trial in range(trials):
            pid = pids[trial % pipelines]
            hooks.release(pipeline_id=pid, cluster=ACTOR_INFER)
            # Let the others absorb the freed GPUs, so the next wake must take from a donor.
            deadline = time.monotonic() + 5
            while scheduler.read(lambda: bool(scheduler.service.state.idle_gpus())):
                if time.monotonic() > deadline:
                    raise RuntimeError("the freed GPUs were not absorbed: " + scheduler.service.diagnostic())
            shrinks_before = engines.shrinks
            start = time.perf_counter()
            grant = hooks.signal_demand(pipeline_id=pid, rollout_id=trial, step_target=64, timeout_s=10)
            latencies.append((time.perf_counter() - start) * 1e3)
            assert grant.dp_ranks and engines.awake[pid], f"{pid} has no awake worker after signal_demand"
            assert engines.shrinks > shrinks_before, "the wake had to take from a donor"
    finally:
        scheduler.close()
    return {
        "backend": "local",
        "pipelines": pipelines,
        "gpus": gpus,
        "trials": trials,
        **latency_figures(latencies),
        "target_p99_ms": 5.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    parser.add_argument("--pipelines", type=int, default=8)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.backend == "local":
        result = run_local(args.pipelines, args.trials)
    else:
        from _reaction_ray import run_ray

        result = run_ray(args.pipelines, args.trials)
    emit(result, args.json)


if __name__ == "__main__":
    main()
