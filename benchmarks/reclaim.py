"""Recovery time: how long a hung pipeline keeps GPUs that another pipeline is waiting for.

    python benchmarks/reclaim.py --json                 # local and ray
    python benchmarks/reclaim.py --backend local --json

Pool of 4 GPUs. Pipeline ``hung`` generates on all four; pipeline ``neighbour`` trains on GPUs
2-3, so its ``request_gpus(actor_train)`` needs two of ``hung``'s engines to sleep.

* local: ``hung``'s sleep blocks forever (an engine wedged in ``release_memory``). The resize
  times out after ``--resize-timeout``, ``hung`` is fenced, and after ``--grace`` its GPUs are
  reclaimed and the neighbour is granted.
* ray: ``hung`` runs in its own actor process, which is stopped with SIGSTOP (alive, answering
  nothing). Two cases: ``ray_waited`` (the neighbour asks at once: the resize times out) and
  ``ray_idle`` (nobody asks: the liveness check finds the silent process after
  ``--liveness-timeout``; the figure is the time until its GPUs are idle in the pool).

Each figure is the median over ``--repeat`` runs of the seconds from the hang to the recovery, and
its overhead beyond the configured timeouts (detection + grace), which is what the scheduler adds.
With the defaults (resize 120 s on ray / 30 s local, liveness 60 s, grace 30 s) recovery is the
configured detection time + grace + that overhead.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from _stats import emit, median

from rlix_plugin import Hooks, get_plugin_manager, hookimpl
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, Priority

CLUSTERS = {
    "hung": {ACTOR_INFER: ClusterSpec(1, (0, 1, 2, 3)), ACTOR_TRAIN: ClusterSpec(2, (0, 1))},
    "neighbour": {ACTOR_INFER: ClusterSpec(1, (0, 1)), ACTOR_TRAIN: ClusterSpec(2, (2, 3))},
}


class Engines:
    """Engines that wake at once; with ``hang_on_sleep`` a sleep blocks until ``release``."""

    def __init__(self, pipeline_id: str, hang_on_sleep: bool = False) -> None:
        self.pipeline_id = pipeline_id
        self.awake: set[int] = set()
        self.hang_on_sleep = hang_on_sleep
        self.release = threading.Event()

    @hookimpl
    def rlix_resize_infer(self, pipeline_id, dp_ranks_to_remove, dp_ranks_to_add):
        if pipeline_id != self.pipeline_id:
            return None
        if dp_ranks_to_remove and self.hang_on_sleep:
            self.release.wait(600)
        self.awake.difference_update(dp_ranks_to_remove)
        self.awake.update(dp_ranks_to_add)
        return tuple(sorted(self.awake))


def hooks(backend: str, engines: Engines, options: dict[str, Any]) -> Hooks:
    pm = get_plugin_manager(backend, backend_options=options, autoload=False)
    pm.register(engines, name=f"engines-{engines.pipeline_id}")
    return Hooks(pm)


def local_once(resize_timeout_s: float, grace_s: float) -> float:
    from rlix_plugin.backends.local import LocalScheduler

    scheduler = LocalScheduler(4, 4, resize_timeout_s=resize_timeout_s, fence_grace_s=grace_s)
    stuck, healthy = Engines("hung", hang_on_sleep=True), Engines("neighbour")
    sick, neighbour = hooks("local", stuck, {"scheduler": scheduler}), hooks("local", healthy, {"scheduler": scheduler})
    try:
        sick.register_pipeline(pipeline_id="hung", clusters=CLUSTERS["hung"])
        neighbour.register_pipeline(pipeline_id="neighbour", clusters=CLUSTERS["neighbour"])
        sick.signal_demand(pipeline_id="hung", rollout_id=0, step_target=8, timeout_s=10)
        started = time.monotonic()
        neighbour.request_gpus(
            pipeline_id="neighbour",
            cluster=ACTOR_TRAIN,
            priority=Priority.ACTOR_TRAINING,
            timeout_s=resize_timeout_s + grace_s + 60,
        )
        return time.monotonic() - started
    finally:
        stuck.release.set()
        for each in (sick, neighbour):
            each.plugin_manager.backend.close()
        scheduler.close()


def ray_once(ask: bool, resize_timeout_s: float, liveness_s: float, grace_s: float) -> float:
    import ray

    from rlix_plugin import connect
    from rlix_plugin.ray.names import NAMESPACE, ORCHESTRATOR_NAME, SCHEDULER_NAME, pipeline_namespace

    for name in (SCHEDULER_NAME, ORCHESTRATOR_NAME):
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass
    time.sleep(0.5)  # let the names go (a fresh scheduler per run: no state carried over)
    client = connect(
        num_gpus=4,
        gpus_per_node=4,
        resize_timeout_s=resize_timeout_s,
        liveness_timeout_s=liveness_s,
        fence_grace_s=grace_s,
    )

    @ray.remote(num_cpus=0)
    class Pipeline:
        def __init__(self) -> None:
            self.hooks = hooks("ray", Engines("hung"), {})

        def start(self) -> int:
            self.hooks.register_pipeline(pipeline_id="hung", clusters=CLUSTERS["hung"])
            self.hooks.signal_demand(pipeline_id="hung", rollout_id=0, step_target=8, timeout_s=30)
            return os.getpid()

    actor = Pipeline.options(name="pipeline", namespace=pipeline_namespace("hung")).remote()
    pid = ray.get(actor.start.remote(), timeout=60)
    neighbour = hooks("ray", Engines("neighbour"), {})
    neighbour.register_pipeline(pipeline_id="neighbour", clusters=CLUSTERS["neighbour"])
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        if ask:
            neighbour.request_gpus(
                pipeline_id="neighbour",
                cluster=ACTOR_TRAIN,
                priority=Priority.ACTOR_TRAINING,
                timeout_s=resize_timeout_s + liveness_s + grace_s + 60,
            )
        else:
            deadline = started + liveness_s + grace_s + 60
            while "hung" not in client.snapshot()["reclaimed"]:
                if time.monotonic() > deadline:
                    raise TimeoutError("the stopped pipeline was not reclaimed")
                time.sleep(0.05)
        return time.monotonic() - started
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        neighbour.unregister_pipeline(pipeline_id="neighbour")


def figures(samples: list[float], configured_s: float) -> dict[str, Any]:
    return {
        "recovery_s_median": round(median(samples), 3),
        "recovery_s": [round(s, 3) for s in samples],
        "configured_s": configured_s,
        "overhead_s_median": round(median(samples) - configured_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("local", "ray", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--resize-timeout", type=float, default=3.0)
    parser.add_argument("--liveness-timeout", type=float, default=4.0)
    parser.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "resize_timeout_s": args.resize_timeout,
        "liveness_timeout_s": args.liveness_timeout,
        "grace_s": args.grace,
        "repeat": args.repeat,
    }
    if args.backend in ("local", "both"):
        samples = [local_once(args.resize_timeout, args.grace) for _ in range(args.repeat)]
        result["local_waited"] = figures(samples, args.resize_timeout + args.grace)
    if args.backend in ("ray", "both"):
        import ray

        ray.init(
            num_cpus=2, num_gpus=4, include_dashboard=False, logging_level="ERROR", object_store_memory=80 * 1024 * 1024
        )
        try:
            waited = [
                ray_once(True, args.resize_timeout, args.liveness_timeout, args.grace) for _ in range(args.repeat)
            ]
            result["ray_waited"] = figures(waited, min(args.resize_timeout, args.liveness_timeout) + args.grace)
            idle = [ray_once(False, args.resize_timeout, args.liveness_timeout, args.grace) for _ in range(args.repeat)]
            result["ray_idle"] = figures(idle, args.liveness_timeout + args.grace)
        finally:
            ray.shutdown()
    emit(result, args.json)


if __name__ == "__main__":
    main()
