"""``hook_overhead.py --backend ray``: the hot path with the ray backend on a local Ray cluster.

Two figures:

* caller-side nanoseconds per ``bump_completed`` through the typed front end, with a progress
  batch open (the coalescer's thread meanwhile sends its reports to the scheduler actor);
* progress RPCs per second that reach the scheduler (counted by the actor) while the rollout
  bumps at ``rate`` samples per second, spread over ``pipelines`` pipelines of this process. The
  coalescer's bound is one report per 0.05 s per pipeline (about 20 per second), whatever the rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rlix_plugin import Hooks, get_plugin_manager, hookimpl
from rlix_plugin.hookspecs import ACTOR_INFER, ClusterSpec

BIG = 10**12  # a step target no benchmark reaches, so the batch stays open


class InstantEngines:
    @hookimpl
    def rlix_resize_infer(self, pipeline_id, dp_ranks_to_remove, dp_ranks_to_add):
        return tuple(sorted(set(dp_ranks_to_add)))


def _paced_bumps(hooks: Hooks, pids: list[str], rate: float, duration: float) -> tuple[int, float]:
    """Bump at ``rate`` per second in total (round robin over ``pids``) for ``duration`` seconds.
    Returns (bumps, elapsed)."""
    bump = hooks.bump_completed
    sent = 0
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= duration:
            break
        due = int(elapsed * rate)
        while sent < due:
            bump(pipeline_id=pids[sent % len(pids)], rollout_id=0, count=1)
            sent += 1
        time.sleep(0.0005)  # pacing: the next bumps are not due yet
    return sent, time.perf_counter() - start


def run_ray(
    calls: int,
    repeat: int,
    rate: float,
    duration: float,
    pipelines: int,
    ns_per_call: Callable[[Hooks, int, int], float],
) -> dict[str, Any]:
    import ray

    from rlix_plugin.ray import connect

    ray.init(
        num_cpus=2,
        num_gpus=max(4, pipelines),
        include_dashboard=False,
        logging_level="ERROR",
        object_store_memory=80 * 1024 * 1024,
    )
    try:
        client = connect(num_gpus=max(4, pipelines), gpus_per_node=max(4, pipelines))
        pm = get_plugin_manager("ray", backend_options={"client": client}, autoload=False)
        pm.register(InstantEngines(), name="engines")
        hooks = Hooks(pm)
        backend = pm.get_plugin("rlix-backend")
        pids = [f"p{i}" for i in range(pipelines)]
        for i, pid in enumerate(pids):
            hooks.register_pipeline(pipeline_id=pid, clusters={ACTOR_INFER: ClusterSpec(1, (i,))})
            hooks.signal_demand(pipeline_id=pid, rollout_id=0, step_target=BIG, timeout_s=30)
            hooks.begin_progress_batch(pipeline_id=pid, rollout_id=0, step_target=BIG)

        caller_ns = ns_per_call(hooks, calls, repeat)  # bumps go to "p0"

        assert backend.flush_progress(10.0)
        before = client.snapshot()["progress_reports"]
        bumps, elapsed = _paced_bumps(hooks, pids, rate, duration)
        assert backend.flush_progress(10.0)
        snap = client.snapshot()
        reports = sum(snap["progress_reports"][pid] - before.get(pid, 0) for pid in pids)
        # Every bump is counted: the timed ones went to p0, the paced ones round robin.
        expected = {
            pid: len(range(i, bumps, pipelines)) + (calls * repeat if i == 0 else 0) for i, pid in enumerate(pids)
        }
        completed = {pid: snap["pipelines"][pid]["progress"][0]["completed"] for pid in pids}
        for pid in pids:
            hooks.end_progress_batch(pipeline_id=pid, rollout_id=0)
            hooks.unregister_pipeline(pipeline_id=pid)
    finally:
        ray.shutdown()
    return {
        "backend": "ray",
        "calls": calls,
        "repeat": repeat,
        "ray_ns_per_call": round(caller_ns, 1),
        "ray_target_ns": 5000,
        "ray_meets_target": caller_ns <= 5000,
        "pipelines": pipelines,
        "bump_rate_per_s": round(bumps / elapsed, 1),
        "duration_s": round(elapsed, 3),
        "progress_rpcs_per_s": round(reports / elapsed, 2),
        "progress_rpcs_per_s_per_pipeline": round(reports / elapsed / pipelines, 2),
        "final_counts_exact": completed == expected,
    }


__all__ = ["run_ray"]
