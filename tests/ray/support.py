"""Shared pieces of the Ray tests: a local cluster per module, a condition wait, a minimal engine
stand-in that implements ``rlix_resize_infer``, and a pipeline that runs rollouts through the
hooks (in the driver or inside its own actor and namespace)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray

from rlix_plugin import Hooks, get_plugin_manager, hookimpl
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, Priority
from rlix_plugin.ray.names import NAMESPACE, ORCHESTRATOR_NAME, SCHEDULER_NAME

from .. import waiting

# Actors defined here run in worker processes that cannot import the test package: ship this
# module by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: A small local cluster: logical GPUs, few CPUs (the machine is shared), a small object store.
INIT_OPTIONS: dict[str, Any] = {
    "num_cpus": 2,
    "num_gpus": 4,
    "include_dashboard": False,
    "logging_level": "ERROR",
    "object_store_memory": 80 * 1024 * 1024,
}


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """:func:`tests.waiting.wait_until`, polling every 0.02 s: predicates here make actor calls."""
    return waiting.wait_until(predicate, timeout_s, what, interval_s=0.02)


def lookup(name: str, namespace: str = NAMESPACE) -> Any:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def reset_rlix() -> None:
    """Close the backends :func:`hooks_for` built, kill the rlix scheduler and orchestrator if they
    run, and wait until their names are free."""
    while built_backends:
        built_backends.pop().close()
    for name in (SCHEDULER_NAME, ORCHESTRATOR_NAME):
        handle = lookup(name)
        if handle is not None:
            ray.kill(handle, no_restart=True)
    wait_until(lambda: lookup(SCHEDULER_NAME) is None and lookup(ORCHESTRATOR_NAME) is None, 30, "rlix actors gone")


def named_actors(namespace: str) -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace)


class EngineStandIn:
    """The generation engines of one pipeline: DP ranks that are awake or asleep.

    ``rlix_resize_infer`` is idempotent per rank and answers only for its own pipeline. ``fail``
    makes a wake raise; ``hang`` makes a wake block until released (a stuck engine)."""

    def __init__(self, pipeline_id: str, fail: str | None = None, hang: bool = False) -> None:
        self.pipeline_id = pipeline_id
        self.awake: set[int] = set()
        self.resizes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.fail = fail
        self.hang = threading.Event() if hang else None
        self._changed = threading.Condition()

    @hookimpl
    def rlix_resize_infer(
        self, pipeline_id: str, dp_ranks_to_remove: tuple[int, ...], dp_ranks_to_add: tuple[int, ...]
    ) -> tuple[int, ...] | None:
        if pipeline_id != self.pipeline_id:
            return None
        if dp_ranks_to_add and self.fail:
            raise RuntimeError(self.fail)
        if dp_ranks_to_add and self.hang is not None:
            self.hang.wait(60)
        with self._changed:
            self.resizes.append((tuple(dp_ranks_to_remove), tuple(dp_ranks_to_add)))
            self.awake -= set(dp_ranks_to_remove)
            self.awake |= set(dp_ranks_to_add)
            self._changed.notify_all()
            return tuple(sorted(self.awake))

    def generate(self, limit: int, tick_s: float, timeout_s: float = 30.0) -> int:
        """One generation tick: every awake engine makes one sample (at most ``limit``). Waits
        for an awake engine first (a preempted pipeline generates nothing)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.awake, timeout_s):
                raise TimeoutError(f"{self.pipeline_id}: no engine awake for {timeout_s}s")
            made = min(len(self.awake), limit)
        time.sleep(tick_s)  # the time a real engine spends generating
        return made


def ray_hooks(engine: EngineStandIn, **backend_options: Any) -> Hooks:
    """The ``ray`` backend's front end, with ``engine`` as its supply side."""
    pm = get_plugin_manager("ray", autoload=False, backend_options=backend_options)
    pm.register(engine, name=f"engine-{engine.pipeline_id}")
    return Hooks(pm)


#: The backends :func:`hooks_for` built in the driver, closed by :func:`reset_rlix`. (Actors of
#: this module, pickled by value with the globals they use, build theirs with :func:`ray_hooks`.)
built_backends: list[Any] = []


def hooks_for(engine: EngineStandIn, **backend_options: Any) -> Hooks:
    """:func:`ray_hooks` in the driver, its backend closed at the test's :func:`reset_rlix`."""
    hooks = ray_hooks(engine, **backend_options)
    built_backends.append(hooks.plugin_manager.backend)
    return hooks


def seed_clusters(train: tuple[int, ...], infer: tuple[int, ...] = (0, 1, 2, 3), tp: int = 1) -> dict[str, ClusterSpec]:
    return {ACTOR_TRAIN: ClusterSpec(tp_size=len(train), gpus=train), ACTOR_INFER: ClusterSpec(tp_size=tp, gpus=infer)}


def run_rollouts(
    hooks: Hooks,
    engine: EngineStandIn,
    clusters: Mapping[str, ClusterSpec],
    rollouts: int,
    step_target: int,
    tick_s: float = 0.005,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """A pipeline's life through the hooks: register, then per rollout signal demand, collect
    ``step_target`` samples, train on the fixed mapping; unregister in a ``finally``."""
    pid = engine.pipeline_id
    report: dict[str, Any] = {
        "pipeline_id": pid,
        "rollouts": 0,
        "samples": 0,
        "grants": [],
        "train_gpus": [],
        "started": time.time(),
    }
    hooks.register_pipeline(pipeline_id=pid, clusters=clusters)
    try:
        report["coordinator_namespace"] = [
            a["namespace"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"] == "rlix:coordinator" and a["namespace"].endswith(pid)
        ]
        for rollout in range(rollouts):
            grant = hooks.signal_demand(pipeline_id=pid, rollout_id=rollout, step_target=step_target, timeout_s=60)
            report["grants"].append(list(grant.dp_ranks))
            hooks.begin_progress_batch(pipeline_id=pid, rollout_id=rollout, step_target=step_target)
            done = 0
            while done < step_target:
                made = engine.generate(step_target - done, tick_s)
                hooks.bump_completed(pipeline_id=pid, rollout_id=rollout, count=made)
                done += made
            hooks.end_progress_batch(pipeline_id=pid, rollout_id=rollout)
            report["samples"] += done
            if ACTOR_TRAIN in clusters:
                train = hooks.request_gpus(
                    pipeline_id=pid, cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=60
                )
                try:
                    report["train_gpus"].append(list(train.gpus))
                    time.sleep(tick_s)  # the time a real training step takes
                finally:
                    hooks.release(pipeline_id=pid, cluster=ACTOR_TRAIN)
            report["rollouts"] += 1
            if progress is not None:
                progress(report["rollouts"])
    finally:
        hooks.unregister_pipeline(pipeline_id=pid, reason="finished")
    report["finished"] = time.time()
    report["resizes"] = len(engine.resizes)
    return report


@ray.remote(num_cpus=0, max_concurrency=2)
class PipelineActor:
    """A pipeline in its own actor (and, as created by the tests, its own namespace). Two threads:
    ``run`` and the ``rollouts_done`` query."""

    def __init__(self, pipeline_id: str, clusters: Mapping[str, ClusterSpec], backend_options: dict[str, Any]) -> None:
        self.engine = EngineStandIn(pipeline_id)
        self.hooks = ray_hooks(self.engine, **backend_options)
        self.clusters = dict(clusters)
        self.done = 0

    def run(self, rollouts: int, step_target: int, tick_s: float = 0.005) -> dict[str, Any]:
        def progress(n: int) -> None:
            self.done = n

        return run_rollouts(self.hooks, self.engine, self.clusters, rollouts, step_target, tick_s, progress)

    def rollouts_done(self) -> int:
        return self.done

    def process_id(self) -> int:
        """The worker process's id (a test stops it with SIGSTOP: alive, but not answering)."""
        return os.getpid()
