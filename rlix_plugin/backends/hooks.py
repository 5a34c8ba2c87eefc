"""The hook layer of every scheduler backend, written once over a :class:`~.port.SchedulerPort`.

:class:`SchedulerHooks` is the plugin a backend registers on a plugin manager. It answers the
demand-side hooks by calling its port, and it is where the hooks meet the outside world:

* **Arguments are checked here** (:mod:`rlix_plugin.arguments`): a bad value raises
  :class:`InvalidRequestError` naming the argument, before anything reaches the scheduler.
* **Leases are kept here.** Registering a pipeline stores the lease the scheduler returned;
  every later call for that pipeline presents it, so framework code never sees one. A call for a
  pipeline this backend did not register (or was not handed the lease of, see :meth:`adopt`) is
  refused with :class:`NotPipelineOwnerError` -- a typo in a pipeline id cannot touch someone
  else's GPUs.
* **The hot path never raises or blocks.** Progress hooks only update a coalescer; a bad or
  unowned report is dropped and logged once per batch ("progress signal lost"); delivery happens
  on the coalescer's thread through :meth:`SchedulerPort.send_progress`. A ``begin`` becomes the
  batch's :class:`~rlix_plugin.progress.ProgressReport`, the one record every later report of
  the batch is derived from.
* Nothing waits for earlier progress before a new rollout's demand: every report carries its
  rollout's epoch, so the previous rollout's late end is ignored by the scheduler whenever it
  arrives (:mod:`rlix_plugin.scheduler.demand`).

The supply side is given at construction (``resize``: runs ``rlix_resize_infer`` on the owning
plugin manager); the port runs it where the engines are.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from rlix_plugin import arguments as check
from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ClusterSpec,
    Grant,
    InvalidRequestError,
    NotPipelineOwnerError,
    PipelineLimits,
    SwitchCosts,
    hookimpl,
)
from rlix_plugin.progress import BEGIN, ProgressCoalescer, ProgressReport

from .port import Registration, ResizeHook, SchedulerPort

log = logging.getLogger(__name__)


class SchedulerHooks:
    """The demand-side hookimpls over one port. Thread-safe."""

    def __init__(
        self,
        port: SchedulerPort,
        resize: ResizeHook,
        *,
        progress_interval_s: float = 0.05,
        leases: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port
        self._resize = resize
        self._leases: dict[str, str] = {}
        self._lock = threading.Lock()
        self._progress = ProgressCoalescer(self._deliver, min_interval_s=progress_interval_s)
        for pid, lease in (leases or {}).items():
            self.adopt(pid, lease)

    @property
    def name(self) -> str:
        return self.port.name

    # -- leases -----------------------------------------------------------------------------------

    @property
    def pipelines(self) -> tuple[str, ...]:
        """Pipelines this backend holds the lease of."""
        with self._lock:
            return tuple(self._leases)

    def lease(self, pipeline_id: str) -> str:
        """The lease of a pipeline registered (or adopted) here, to hand to another process of the
        same pipeline (which passes it as ``backend_options={"leases": {pipeline_id: lease}}``).

        :raises NotPipelineOwnerError: this backend holds no lease for it.
        """
        return self._lease_of(pipeline_id)

    def adopt(self, pipeline_id: str, lease: str) -> None:
        """Act for ``pipeline_id`` with a lease its registering process handed over."""
        check.pipeline_id(pipeline_id)
        check.text(lease, "lease", 256)
        with self._lock:
            self._leases[pipeline_id] = lease

    def _lease_of(self, pipeline_id: str) -> str:
        with self._lock:
            lease = self._leases.get(pipeline_id)
        if lease is None:
            raise NotPipelineOwnerError(
                f"pipeline {pipeline_id!r} was not registered through this {self.port.name} backend, and no lease "
                "for it was handed over; nothing was changed"
            )
        return lease

    # -- lifecycle --------------------------------------------------------------------------------

    @hookimpl
    def rlix_register_pipeline(
        self,
        pipeline_id: str,
        clusters: Mapping[str, ClusterSpec],
        switch_costs: SwitchCosts | None,
        limits: PipelineLimits | None,
    ) -> None:
        check.pipeline_id(pipeline_id)
        if not isinstance(clusters, Mapping):
            raise InvalidRequestError(f"pipeline {pipeline_id!r}: clusters must be a mapping, got {clusters!r}")
        if switch_costs is not None and not isinstance(switch_costs, SwitchCosts):
            raise InvalidRequestError(
                f"pipeline {pipeline_id!r}: switch_costs must be a SwitchCosts, got {switch_costs!r}"
            )
        if limits is not None and not isinstance(limits, PipelineLimits):
            raise InvalidRequestError(f"pipeline {pipeline_id!r}: limits must be a PipelineLimits, got {limits!r}")
        with self._lock:
            if pipeline_id in self._leases:
                raise InvalidRequestError(f"pipeline {pipeline_id!r} is already registered through this backend")
        lease = self.port.register(Registration(pipeline_id, dict(clusters), switch_costs, limits), self._resize)
        with self._lock:
            self._leases[pipeline_id] = lease

    @hookimpl
    def rlix_unregister_pipeline(self, pipeline_id: str, reason: str) -> None:
        check.pipeline_id(pipeline_id)
        reason = check.text(reason, "reason")
        with self._lock:
            lease = self._leases.pop(pipeline_id, None)
        if lease is None:
            return  # not ours (or already gone): nothing this process may remove
        self._progress.forget(pipeline_id)
        self.port.unregister(pipeline_id, lease, reason)

    # -- demand -----------------------------------------------------------------------------------

    @hookimpl
    def rlix_signal_demand(self, pipeline_id: str, rollout_id: int, step_target: int, timeout_s: float) -> Grant:
        check.pipeline_id(pipeline_id)
        check.integer(rollout_id, "rollout_id", 0)
        check.integer(step_target, "step_target", 1)
        timeout_s = check.timeout(timeout_s)
        lease = self._lease_of(pipeline_id)
        return self.port.signal_demand(pipeline_id, lease, rollout_id, step_target, timeout_s)

    @hookimpl
    def rlix_request_gpus(
        self, pipeline_id: str, cluster: str, priority: int, step_target: int | None, timeout_s: float
    ) -> Grant:
        check.pipeline_id(pipeline_id)
        check.cluster(cluster)
        check.integer(priority, "priority", 0, 6)
        check.optional_integer(step_target, "step_target", 1)
        timeout_s = check.timeout(timeout_s)
        lease = self._lease_of(pipeline_id)
        return self.port.request(pipeline_id, lease, cluster, int(priority), step_target, timeout_s)

    @hookimpl
    def rlix_release(self, pipeline_id: str, cluster: str) -> None:
        check.pipeline_id(pipeline_id)
        check.cluster(cluster)
        lease = self._lease_of(pipeline_id)
        if cluster == ACTOR_INFER:
            self._progress.forget(pipeline_id)
        self.port.release(pipeline_id, lease, cluster)

    @hookimpl
    def rlix_report_preempt(self, pipeline_id: str, dp_rank: int, retracted: int) -> None:
        try:
            check.integer(dp_rank, "dp_rank", 0)
            check.integer(retracted, "retracted", 0)
            self.port.report_preempt(pipeline_id, self._lease_of(pipeline_id), dp_rank, retracted)
        except Exception as exc:  # informational, on the engines' path: never raised into them
            log.warning("progress signal lost for pipeline %r (preempt report): %r", pipeline_id, exc)

    # -- progress (hot path: never raises, never blocks) ------------------------------------------

    @hookimpl
    def rlix_begin_progress_batch(
        self,
        pipeline_id: str,
        rollout_id: int,
        mode: str,
        adapter_id: str | None,
        target_weight_version: int,
        step_target: int,
        initial_completed: int,
    ) -> None:
        try:
            check.pipeline_id(pipeline_id)
            check.integer(rollout_id, "rollout_id", 0)
            check.text(mode, "mode", 16)
            check.optional_text(adapter_id, "adapter_id")
            check.integer(target_weight_version, "target_weight_version", -1)
            check.integer(step_target, "step_target", 1)
            check.integer(initial_completed, "initial_completed", 0, step_target)
            self._lease_of(pipeline_id)
        except Exception as exc:
            self._progress.lose(pipeline_id, mode, adapter_id, "begin", exc)
            return
        self._progress.begin(
            ProgressReport(
                BEGIN,
                pipeline_id,
                int(rollout_id),
                mode,
                adapter_id,
                int(step_target),
                int(initial_completed),
                int(target_weight_version),
            )
        )

    @hookimpl
    def rlix_bump_completed(
        self,
        pipeline_id: str,
        rollout_id: int,
        mode: str,
        adapter_id: str | None,
        target_weight_version: int,
        count: int,
    ) -> None:
        if type(count) is not int or count < 0 or type(target_weight_version) is not int or type(rollout_id) is not int:
            self._progress.lose(
                pipeline_id,
                mode,
                adapter_id,
                "bump",
                InvalidRequestError(
                    f"bump_completed: count must be an int >= 0, rollout_id and target_weight_version ints, got "
                    f"count={count!r}, rollout_id={rollout_id!r}, target_weight_version={target_weight_version!r}"
                ),
            )
            return
        self._progress.bump(pipeline_id, rollout_id, mode, adapter_id, target_weight_version, count)

    @hookimpl
    def rlix_end_progress_batch(self, pipeline_id: str, rollout_id: int, mode: str, adapter_id: str | None) -> None:
        self._progress.end(pipeline_id, rollout_id, mode, adapter_id)

    # -- plumbing ---------------------------------------------------------------------------------

    def flush_progress(self, timeout_s: float = 5.0) -> bool:
        """Wait until every progress call so far was applied by the scheduler (tests, tools).
        No hook waits for it: the rollout epoch orders rollouts (see the module docstring)."""
        if not self._progress.flush(timeout_s):
            return False
        return self.port.flush(timeout_s)

    def _deliver(self, report: ProgressReport) -> None:
        """On the coalescer's thread: raises (logged there as "progress signal lost") for a
        pipeline this backend holds no lease of, or when the port says a report was lost."""
        self.port.send_progress(self._lease_of(report.pipeline_id), report)

    def is_registered(self, pipeline_id: str) -> bool:
        """Whether the scheduler behind this backend knows ``pipeline_id`` (one round trip)."""
        return self.port.is_registered(pipeline_id)

    def diagnostic(self, headline: str = "") -> str:
        return self.port.diagnostic(headline)

    def close(self, reason: str = "backend closed") -> None:
        """Unregister every pipeline registered here, deliver what progress is left, and stop this
        backend's threads. Idempotent; a shared scheduler itself is not closed (one the backend
        was built with for itself is)."""
        for pipeline_id in self.pipelines:
            try:
                self.rlix_unregister_pipeline(pipeline_id, reason)
            except Exception as exc:
                log.warning("unregistering %s on close: %r", pipeline_id, exc)
        self._progress.close()
        self.port.close()

    def __repr__(self) -> str:
        return f"SchedulerHooks({self.port.name}, pipelines={list(self.pipelines)})"


def manager_resize(pm: Any) -> ResizeHook:
    """The supply side of plugin manager ``pm``: its ``rlix_resize_infer``."""

    def resize(pipeline_id: str, remove: tuple[int, ...], add: tuple[int, ...]) -> tuple[int, ...] | None:
        return pm.hook.rlix_resize_infer(pipeline_id=pipeline_id, dp_ranks_to_remove=remove, dp_ranks_to_add=add)

    return resize


__all__ = ["SchedulerHooks", "manager_resize"]
