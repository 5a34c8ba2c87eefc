"""The scheduler in virtual time: the live scheduler's core, driven by events instead of asyncio.

:class:`SimulatedScheduler` is to :class:`~rlix_plugin.scheduler.core.SchedulerCore` what the
async service is: it turns requests into waiters (callbacks here, futures there), runs a planning
pass after the changes of one instant (the service does so on its next loop turn), hands each
resize call to the pipeline's engine model and feeds the outcome back, and wakes up at the core's
deadlines. Every decision -- targets, moves, payoff, residency, fencing -- is the core's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    CLUSTER_NAMES,
    MODE_FULL,
    ClusterSpec,
    PipelineLimits,
    Priority,
    SwitchCosts,
)
from rlix_plugin.progress import BEGIN, END, ProgressReport
from rlix_plugin.progress import PROGRESS as COUNT
from rlix_plugin.scheduler.core import SchedulerCore
from rlix_plugin.scheduler.demand import RETIRED
from rlix_plugin.scheduler.policy import Policy
from rlix_plugin.scheduler.state import Fenced, ReleaseDone, ResizeAction, ResizeOutcome, Satisfied
from rlix_plugin.scheduler.topology import PoolTopology, cluster_id
from rlix_plugin.scheduler.trigger import PROGRESS

from .events import EventLoop, Timer

_CLUSTERS = frozenset(CLUSTER_NAMES)


class EngineModel(Protocol):
    """The supply side of one simulated pipeline."""

    def resize(self, action: ResizeAction, done: Callable[[ResizeOutcome], None]) -> None:
        """Start the call; call ``done`` with its outcome when it finishes (in virtual time)."""


class SimulatedScheduler:
    """One scheduler on an :class:`EventLoop`."""

    def __init__(self, loop: EventLoop, pool: PoolTopology, policy: Policy | str) -> None:
        self.loop = loop
        self.core = SchedulerCore(pool, loop.now, policy=policy)
        self.state = self.core.state
        self._engines: dict[str, EngineModel] = {}
        self._waiters: dict[str, Callable[[], None]] = {}
        self._released: dict[str, Callable[[], None]] = {}
        #: The latest rollout each pipeline signalled: the epoch of its progress reports.
        self._rollouts: dict[str, int] = {}
        self._pass: Timer | None = None
        self._deadline: Timer | None = None
        #: Planning passes run, and their total wall-clock cost is the caller's to measure.
        self.passes = 0

    # -- the demand side ------------------------------------------------------------------------------

    def register(
        self,
        pipeline_id: str,
        clusters: Mapping[str, ClusterSpec],
        engines: EngineModel,
        switch_costs: SwitchCosts | None = None,
        limits: PipelineLimits | None = None,
    ) -> None:
        self.state.register(pipeline_id, clusters, switch_costs, limits)
        self.state.admit(pipeline_id)
        self._engines[pipeline_id] = engines
        self._changed("register")

    def unregister(self, pipeline_id: str) -> None:
        """Remove a pipeline; its waiting callbacks are dropped, never called."""
        self.state.unregister(pipeline_id)
        self._engines.pop(pipeline_id, None)
        self._released.pop(pipeline_id, None)
        self._rollouts.pop(pipeline_id, None)
        prefix = cluster_id(pipeline_id, "")
        for key in [k for k in self._waiters if k.startswith(prefix) and k[len(prefix) :] in _CLUSTERS]:
            del self._waiters[key]
        self._changed("unregister")

    def request(
        self, pipeline_id: str, cluster: str, priority: int, step_target: int | None, granted: Callable[[], None]
    ) -> None:
        """``granted()`` is called once the cluster is held (at once if it already is)."""
        outcome = self.state.request(pipeline_id, cluster, priority, step_target)
        self._changed("request")
        if outcome.granted:
            granted()
        else:
            self._waiters[cluster_id(pipeline_id, cluster)] = granted

    def signal_demand(self, pipeline_id: str, step_target: int, granted: Callable[[], None]) -> None:
        """The pipeline's next rollout: its epoch (counted here, one per signal) carries its progress."""
        rollout_id = self._rollouts.get(pipeline_id, -1) + 1
        self.state.open_rollout(pipeline_id, rollout_id)
        self._rollouts[pipeline_id] = rollout_id
        self.request(pipeline_id, ACTOR_INFER, Priority.GENERATION, step_target, granted)

    def release(self, pipeline_id: str, cluster: str, done: Callable[[], None] | None = None) -> None:
        if self.state.release(pipeline_id, cluster) and done is not None:
            self._released[pipeline_id] = done
        elif done is not None:
            self.loop.after(0.0, done)
        self._changed("release")

    def report_progress(self, pipeline_id: str, step_target: int, completed: int, new_batch: bool) -> None:
        self._progress(BEGIN if new_batch else COUNT, pipeline_id, step_target, completed)

    def end_progress(self, pipeline_id: str) -> None:
        self._progress(END, pipeline_id, 1, 0)  # an end's count and target are not read

    def _progress(self, kind: str, pipeline_id: str, step_target: int, completed: int) -> None:
        rollout_id = self._rollouts.get(pipeline_id, 0)
        report = ProgressReport(kind, pipeline_id, rollout_id, MODE_FULL, None, step_target, completed, 0)
        outcome = self.state.apply_progress(report)
        self._changed("demand retired" if outcome == RETIRED else PROGRESS, pipeline_id)

    # -- driving the core -----------------------------------------------------------------------------

    def _changed(self, event: str, pipeline_id: str | None = None) -> None:
        if self.core.note(event, pipeline_id) and self._pass is None:
            self._pass = self.loop.after(0.0, self._run_pass)

    def _run_pass(self) -> None:
        self._pass = None
        self.passes += 1
        if self.core.plan() is not None:
            self._dispatch()
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        deadline = self.core.deadline(self.loop.now())
        if deadline is None:
            return
        if self._deadline is not None and not self._deadline.cancelled and self._deadline.at <= deadline:
            return
        if self._deadline is not None:
            self._deadline.cancel()

        def due() -> None:
            self._deadline = None
            self.core.dirty = True
            self._changed("deadline")

        self._deadline = self.loop.at(deadline, due)

    def _on_resized(self, action: ResizeAction, issued: float) -> Callable[[ResizeOutcome], None]:
        """What the engines call when ``action`` (started at ``issued``) is done."""
        return lambda outcome: self._resized(action, replace(outcome, seconds=self.loop.now() - issued))

    def _dispatch(self) -> None:
        for action in self.core.take_actions():
            engines = self._engines.get(action.pipeline_id)
            if engines is not None:
                engines.resize(action, self._on_resized(action, self.loop.now()))
        for event in self.core.take_events():
            if isinstance(event, Satisfied):
                waiter = self._waiters.pop(event.request.cluster_id, None)
                if waiter is not None:
                    waiter()
            elif isinstance(event, ReleaseDone):
                done = self._released.pop(event.pipeline_id, None)
                if done is not None:
                    done()
            elif isinstance(event, Fenced):
                raise RuntimeError(f"simulated pipeline {event.pipeline_id} was fenced: {event.reason}")

    def _resized(self, action: ResizeAction, outcome: ResizeOutcome) -> None:
        self.core.resized(action, outcome)
        self._dispatch()
        self._changed("resized", action.pipeline_id)


__all__ = ["EngineModel", "SimulatedScheduler"]
