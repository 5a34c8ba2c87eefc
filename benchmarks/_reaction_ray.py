"""Reaction time with the ``ray`` backend (``benchmarks/reaction.py --backend ray``).

Same scenario as the local variant, on a local Ray cluster with ``2 x pipelines`` logical GPUs:
the scheduler is the ``rlix:scheduler`` actor, every pipeline has its own coordinator actor, and
all pipelines live in this driver (several pipelines per job), whose resize threads answer at
once. Each timed ``signal_demand`` crosses: driver -> scheduler, scheduler -> donor's coordinator
-> driver (sleep) -> coordinator -> scheduler, the same for the wake, then scheduler -> driver.
Target: p99 <= 50 ms with 8 pipelines.
"""

from __future__ import annotations

import time
from typing import Any

from _stats import latency_figures
from reaction import InstantEngines  # the same instant supply side as the in-process run

from rlix_plugin import Hooks, get_plugin_manager
from rlix_plugin.hookspecs import ACTOR_INFER, ClusterSpec


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")


def run_ray(pipelines: int, trials: int) -> dict[str, object]:
    import ray

    from rlix_plugin.ray import connect

    gpus = 2 * pipelines
    ray.init(
        num_cpus=2, num_gpus=gpus, include_dashboard=False, logging_level="ERROR", object_store_memory=80 * 1024 * 1024
    )
    try:
        client = connect(num_gpus=gpus, gpus_per_node=gpus)
        pm = get_plugin_manager("ray", backend_options={"client": client}, autoload=False)
        engines = InstantEngines()
        pm.register(engines, name="engines")
        hooks = Hooks(pm)
        pids = [f"p{i}" for i in range(pipelines)]
        for pid in pids:
            hooks.register_pipeline(pipeline_id=pid, clusters={ACTOR_INFER: ClusterSpec(1, tuple(range(gpus)))})
            hooks.signal_demand(pipeline_id=pid, rollout_id=0, step_target=64, timeout_s=30)
        latencies = []
        for trial in range(trials):
            pid = pids[trial % pipelines]
            hooks.release(pipeline_id=pid, cluster=ACTOR_INFER)
            # Let the others absorb the freed GPUs, so the next wake must take from a donor.
            _wait(lambda: not client.snapshot()["idle_gpus"], 10, "the freed GPUs to be absorbed")
            shrinks_before = engines.shrinks
            start = time.perf_counter()
            grant = hooks.signal_demand(pipeline_id=pid, rollout_id=trial, step_target=64, timeout_s=30)
            latencies.append((time.perf_counter() - start) * 1e3)
            assert grant.dp_ranks and engines.awake[pid], f"{pid} has no awake worker after signal_demand"
            assert engines.shrinks > shrinks_before, "the wake had to take from a donor"
        for pid in pids:
            hooks.unregister_pipeline(pipeline_id=pid)
        client.shutdown()
    finally:
        ray.shutdown()
    return {
        "backend": "ray",
        "pipelines": pipelines,
        "gpus": gpus,
        "trials": trials,
        **latency_figures(latencies),
        "target_p99_ms": 50.0,
    }


__all__ = ["run_ray"]
