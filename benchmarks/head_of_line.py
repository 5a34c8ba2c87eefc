"""Head-of-line blocking: a grant on GPUs no resize touches, while another pipeline's resize is slow.

    python benchmarks/head_of_line.py --json                  # local backend
    python benchmarks/head_of_line.py --backend ray --json    # a local Ray cluster, logical GPUs

Pool of 6 GPUs. Pipeline ``slow`` generates on GPUs 4-5 and its engines take ``--resize-seconds``
(3) to wake, as a 30B-class engine does. Pipeline ``fast`` trains on GPUs 0-1 and generates on
2-3. In each window ``slow`` signals demand, so its wake is in flight for 3 s; meanwhile ``fast``
requests and releases its training GPUs (idle, untouched by that wake) again and again. Every
``request_gpus`` that started and ended while the wake was in flight is one trial; the figure is
its latency (p50/p99, ms). Target: p99 <= 50 ms local, <= 100 ms ray (a scheduler that waits for
every resize of a cycle makes these requests wait up to the whole 3 s).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from _stats import emit, latency_figures

from rlix_plugin import Hooks, get_plugin_manager, hookimpl
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, Priority

TARGET_P99_MS = {"local": 50.0, "ray": 100.0}


class Engines:
    """Engines of one pipeline; waking takes ``wake_s``. ``waking`` is set while a wake runs."""

    def __init__(self, pipeline_id: str, wake_s: float) -> None:
        self.pipeline_id = pipeline_id
        self.wake_s = wake_s
        self.awake: set[int] = set()
        self.waking = threading.Event()

    @hookimpl
    def rlix_resize_infer(self, pipeline_id, dp_ranks_to_remove, dp_ranks_to_add):
        if pipeline_id != self.pipeline_id:
            return None
        self.awake.difference_update(dp_ranks_to_remove)
        if dp_ranks_to_add and self.wake_s:
            self.waking.set()
            time.sleep(self.wake_s)
            self.waking.clear()
        self.awake.update(dp_ranks_to_add)
        return tuple(sorted(self.awake))


def measure(make_manager: Any, trials: int, resize_s: float) -> list[float]:
    """Latencies (ms) of ``fast``'s training requests made while ``slow``'s wake is in flight."""
    slow_engines, fast_engines = Engines("slow", resize_s), Engines("fast", 0.0)
    slow, fast = make_manager(slow_engines), make_manager(fast_engines)
    slow.register_pipeline(pipeline_id="slow", clusters={ACTOR_INFER: ClusterSpec(1, (4, 5))})
    fast.register_pipeline(
        pipeline_id="fast", clusters={ACTOR_INFER: ClusterSpec(1, (2, 3)), ACTOR_TRAIN: ClusterSpec(2, (0, 1))}
    )
    latencies: list[float] = []
    try:
        while len(latencies) < trials:
            errors: list[BaseException] = []

            def demand(errors: list[BaseException] = errors) -> None:
                try:
                    slow.signal_demand(pipeline_id="slow", rollout_id=0, step_target=8, timeout_s=resize_s + 30)
                except BaseException as exc:  # reported below, in the main thread
                    errors.append(exc)

            thread = threading.Thread(target=demand, daemon=True)
            thread.start()
            if not slow_engines.waking.wait(30):
                raise RuntimeError(f"the slow pipeline's wake never started: {errors}")
            while slow_engines.waking.is_set() and len(latencies) < trials:
                start = time.perf_counter()
                grant = fast.request_gpus(
                    pipeline_id="fast", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=30
                )
                elapsed = (time.perf_counter() - start) * 1e3
                during = slow_engines.waking.is_set()
                fast.release(pipeline_id="fast", cluster=ACTOR_TRAIN)
                assert grant.gpus == (0, 1), grant
                if during:
                    latencies.append(elapsed)
            thread.join(resize_s + 60)
            if errors:
                raise errors[0]
            slow.release(pipeline_id="slow", cluster=ACTOR_INFER)
    finally:
        for hooks, pid in ((slow, "slow"), (fast, "fast")):
            try:
                hooks.unregister_pipeline(pipeline_id=pid, reason="benchmark over")
            except Exception:
                pass
    return latencies


def run(backend: str, trials: int, resize_s: float) -> dict[str, object]:
    cleanup = []
    if backend == "local":
        from rlix_plugin.backends.local import LocalScheduler

        scheduler = LocalScheduler(6, 6, resize_timeout_s=resize_s + 60)
        cleanup.append(scheduler.close)
        options: dict[str, Any] = {"scheduler": scheduler}
    else:
        import ray

        from rlix_plugin.ray import connect

        ray.init(num_gpus=6, include_dashboard=False, logging_level="ERROR")
        cleanup.append(ray.shutdown)
        options = {"client": connect(num_gpus=6, gpus_per_node=6, resize_timeout_s=resize_s + 60)}

    def make_manager(engines: Engines) -> Hooks:
        pm = get_plugin_manager(backend, backend_options=options, autoload=False)
        pm.register(engines, name=f"engines-{engines.pipeline_id}")
        return Hooks(pm)

    try:
        latencies = measure(make_manager, trials, resize_s)
    finally:
        for step in reversed(cleanup):
            step()
    return {
        "backend": backend,
        "trials": len(latencies),
        "resize_s": resize_s,
        **latency_figures(latencies),
        "target_p99_ms": TARGET_P99_MS[backend],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--resize-seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    emit(run(args.backend, args.trials, args.resize_seconds), args.json)


if __name__ == "__main__":
    main()
