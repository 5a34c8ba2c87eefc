"""Shared pieces of the operator tests: engines that take a little time to switch, pipelines that
roll out and train through the hooks in threads (on any backend), free ports, and the checks that
compare what an operator sees with the scheduler's snapshot."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from rlix_plugin import Hooks, get_plugin_manager, hookimpl
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, PipelineGoneError, Priority
from rlix_plugin.metrics import report_weight_sync


class SlowEngines:
    """The supply side of one pipeline: each wake and sleep takes ``switch_s`` (a real engine
    takes seconds; a few milliseconds make the resize histograms and the transitions real)."""

    def __init__(self, pipeline_id: str, switch_s: float = 0.01, fail_wake: str | None = None) -> None:
        self.pipeline_id = pipeline_id
        self.switch_s = switch_s
        self.fail_wake = fail_wake
        self.awake: set[int] = set()
        self.changed = threading.Condition()
        #: Set to hold every wake until it is cleared (an engine stuck waking).
        self.hold_wakes = threading.Event()
        self.release_wakes = threading.Event()

    @hookimpl
    def rlix_resize_infer(self, pipeline_id, dp_ranks_to_remove, dp_ranks_to_add):
        if pipeline_id != self.pipeline_id:
            return None
        if dp_ranks_to_add and self.fail_wake:
            raise RuntimeError(self.fail_wake)
        if dp_ranks_to_add and self.hold_wakes.is_set():
            self.release_wakes.wait(60)
        time.sleep(self.switch_s)  # the time an engine takes to wake or fall asleep
        with self.changed:
            self.awake -= set(dp_ranks_to_remove)
            self.awake |= set(dp_ranks_to_add)
            self.changed.notify_all()
            return tuple(sorted(self.awake))

    def generate(self, want: int, tick_s: float) -> int:
        """One tick: each awake engine makes one sample (at most ``want``); none while preempted."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.awake, 30):
                raise AssertionError(f"{self.pipeline_id}: no engine awake for 30s")
            made = min(len(self.awake), want)
        time.sleep(tick_s)  # the time engines spend generating
        return made


def clusters(train: tuple[int, ...], infer: tuple[int, ...] = (0, 1, 2, 3)) -> dict[str, ClusterSpec]:
    return {ACTOR_TRAIN: ClusterSpec(len(train), train), ACTOR_INFER: ClusterSpec(1, infer)}


def hooks_on(backend: str, options: Mapping[str, Any], engines: SlowEngines) -> Hooks:
    pm = get_plugin_manager(backend, backend_options=dict(options), autoload=False)
    pm.register(engines, name=f"engines-{engines.pipeline_id}")
    return Hooks(pm)


class Pipeline(threading.Thread):
    """One pipeline's life through the hooks: register, then rollouts (signal demand, progress,
    samples from the awake engines), each followed by training on its fixed mapping and a weight
    sync report; unregister at the end. Runs ``rollouts`` rollouts, or until :attr:`stop` is set."""

    def __init__(
        self,
        hooks: Hooks,
        engines: SlowEngines,
        train: tuple[int, ...],
        *,
        rollouts: int | None = None,
        step_target: int = 12,
        tick_s: float = 0.01,
        train_s: float = 0.05,
        infer: tuple[int, ...] = (0, 1, 2, 3),
    ) -> None:
        super().__init__(name=f"pipeline-{engines.pipeline_id}", daemon=True)
        self.hooks, self.engines, self.train, self.infer = hooks, engines, train, infer
        self.pipeline_id = engines.pipeline_id
        self.rollouts, self.step_target, self.tick_s, self.train_s = rollouts, step_target, tick_s, train_s
        self.stop = threading.Event()
        self.signals = 0
        self.trainings = 0
        self.done_rollouts = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        pid, hooks = self.pipeline_id, self.hooks
        try:
            hooks.register_pipeline(pipeline_id=pid, clusters=clusters(self.train, self.infer))
            try:
                rollout = 0
                while not self.stop.is_set() and (self.rollouts is None or rollout < self.rollouts):
                    hooks.signal_demand(pipeline_id=pid, rollout_id=rollout, step_target=self.step_target, timeout_s=30)
                    self.signals += 1
                    hooks.begin_progress_batch(pipeline_id=pid, rollout_id=rollout, step_target=self.step_target)
                    done = 0
                    while done < self.step_target:
                        made = self.engines.generate(self.step_target - done, self.tick_s)
                        hooks.bump_completed(pipeline_id=pid, rollout_id=rollout, count=made)
                        done += made
                    hooks.end_progress_batch(pipeline_id=pid, rollout_id=rollout)
                    hooks.request_gpus(
                        pipeline_id=pid, cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=30
                    )
                    self.trainings += 1
                    try:
                        time.sleep(self.train_s)  # the time a training step takes
                    finally:
                        hooks.release(pipeline_id=pid, cluster=ACTOR_TRAIN)
                    started = time.monotonic()
                    time.sleep(0.002)  # the time pushing new weights into the awake engines takes
                    report_weight_sync(pid, time.monotonic() - started)
                    rollout += 1
                    self.done_rollouts = rollout
            finally:
                hooks.release(pipeline_id=pid, cluster=ACTOR_INFER)
                hooks.unregister_pipeline(pipeline_id=pid, reason="finished")
        except PipelineGoneError as exc:
            if not self.stop.is_set():
                self.error = exc
        except BaseException as exc:  # reported by the test that joins it
            self.error = exc

    def finish(self, timeout_s: float = 30.0, *, stop: bool = True) -> None:
        """Join it (after asking it to stop after its current rollout, unless ``stop`` is False:
        then it runs all its rollouts); raise what it failed with."""
        if stop:
            self.stop.set()
        self.join(timeout_s)
        assert not self.is_alive(), f"{self.pipeline_id} did not finish within {timeout_s}s"
        if self.error is not None:
            raise AssertionError(f"{self.pipeline_id} failed: {self.error!r}") from self.error


def spawn(backend: str, options: Mapping[str, Any], pid: str, train: tuple[int, ...], **kwargs: Any) -> Pipeline:
    """Start pipeline ``pid`` (engines and hooks of its own) in a thread."""
    engines = SlowEngines(pid, switch_s=kwargs.pop("switch_s", 0.01))
    run = Pipeline(hooks_on(backend, options, engines), engines, train, **kwargs)
    run.start()
    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def expected_gauges(snapshot: Mapping[str, Any]) -> dict[str, dict[tuple[str, ...], float]]:
    """The gauges an operator should see, worked out from the snapshot's per-pipeline tables and
    its holder strings -- not from the code the exporters use."""
    held: dict[tuple[str, ...], float] = {}
    for pid, info in snapshot["pipelines"].items():
        for name, cluster in info["clusters"].items():
            if name != ACTOR_INFER and cluster["held"]:
                held[(pid, name, "training")] = float(len(cluster["gpus_held"]))
    for holder in snapshot["gpu_holders"]:
        if holder is not None and f"_{ACTOR_INFER}[dp" in holder:
            pid = holder.split(f"_{ACTOR_INFER}[dp")[0]
            state = "waking" if "(waking)" in holder else "falling_asleep" if "(falling asleep)" in holder else "awake"
            held[(pid, ACTOR_INFER, state)] = held.get((pid, ACTOR_INFER, state), 0.0) + 1
    pending = {(str(p),): 0.0 for p in range(7)}
    for priority, requests in snapshot["pending"].items():
        pending[(priority,)] = float(len(requests))
    pipelines = snapshot["pipelines"]
    return {
        "rlix_gpus_held": held,
        "rlix_idle_gpus": {(): float(sum(1 for h in snapshot["gpu_holders"] if h is None))},
        "rlix_pool_gpus": {(): float(snapshot["pool"]["num_gpus"])},
        "rlix_pipelines": {(): float(len(pipelines))},
        "rlix_fenced_pipelines": {(): float(sum(1 for p in pipelines.values() if p["fenced"]))},
        "rlix_generation_bundles_awake": {
            (p,): float(len(i["clusters"][ACTOR_INFER]["awake_dp_ranks"])) for p, i in pipelines.items()
        },
        "rlix_generation_bundles_entitled": {(p,): float(snapshot["entitled_bundles"].get(p, 0)) for p in pipelines},
        "rlix_open_demand_samples": {(p,): float(i["open_demand"] or 0) for p, i in pipelines.items()},
        "rlix_remaining_samples": {(p,): float(i["remaining"]) for p, i in pipelines.items()},
        "rlix_pending_requests": pending,
    }


def comparable(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A snapshot without what changes by itself (waiting times, uptimes, report counters)."""
    snap = {k: v for k, v in snapshot.items() if k not in ("scheduler", "progress_reports")}
    snap["pending"] = {
        p: [{k: v for k, v in r.items() if k != "waiting_s"} for r in rs]
        for p, rs in snapshot.get("pending", {}).items()
    }
    return snap
