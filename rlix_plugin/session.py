"""One pipeline's lifecycle with the scheduler, written once for every integration.

:class:`PipelineSession` registers a pipeline (once), asks for GPUs and gives them back, and
closes: whatever happened, :meth:`~PipelineSession.close` releases every cluster the pipeline
may hold and unregisters it, running every step even when an earlier one fails and never raising
(it runs in ``finally`` blocks, where an error would mask the one being unwound). The miles and
verl integrations and the reference framework's pipeline build on it; each adds what its
framework needs (units, progress batches, the install of its hooks) and nothing of the lifecycle.

Pairs with :class:`rlix_plugin.supply.PipelineEngines`, the supply side of a pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rlix_plugin.hookspecs import ACTOR_INFER, Grant, InvalidRequestError

if TYPE_CHECKING:
    from rlix_plugin.frontend import Hooks
    from rlix_plugin.hookspecs import ClusterSpec, PipelineLimits, SwitchCosts

log = logging.getLogger(__name__)

#: One step of :meth:`PipelineSession.close`: what it does (for the log line) and the call.
CloseStep = tuple[str, Callable[[], object]]


class PipelineSession:
    """Register one pipeline, acquire and release its clusters, and give everything back.

    :param hooks: The front end to call.
    :param pipeline_id: The pipeline's id on the scheduler.
    :param clusters: Cluster name -> :class:`~rlix_plugin.hookspecs.ClusterSpec`, registered by
        :meth:`register`.
    :param timeout_s: Longest wait of :meth:`signal_demand` and :meth:`acquire`.
    :param switch_costs: What the pipeline's engines take to wake, sleep and sync (declared at
        registration; the scheduler measures them from then on).
    :param limits: What the pipeline declares about itself (largest step target, bundle quota).
    """

    def __init__(
        self,
        hooks: Hooks,
        *,
        pipeline_id: str,
        clusters: Mapping[str, ClusterSpec],
        timeout_s: float,
        switch_costs: SwitchCosts | None = None,
        limits: PipelineLimits | None = None,
    ) -> None:
        self.hooks = hooks
        self.pipeline_id = pipeline_id
        self.clusters = dict(clusters)
        self.timeout_s = timeout_s
        self.switch_costs = switch_costs
        self.limits = limits
        self._registered = False

    @property
    def registered(self) -> bool:
        """Registered and not closed since."""
        return self._registered

    def register(self) -> None:
        """Register the pipeline with the scheduler (once; later calls do nothing)."""
        if self._registered:
            return
        self.hooks.register_pipeline(
            pipeline_id=self.pipeline_id, clusters=self.clusters, switch_costs=self.switch_costs, limits=self.limits
        )
        self._registered = True
        log.info(
            "rlix: pipeline %r registered (%s)",
            self.pipeline_id,
            "; ".join(f"{name}: tp={spec.tp_size} gpus={list(spec.gpus)}" for name, spec in self.clusters.items()),
        )

    def require_registered(self, what: str) -> None:
        """Raise :class:`InvalidRequestError` naming ``what`` unless the session is registered."""
        if not self._registered:
            raise InvalidRequestError(
                f"pipeline {self.pipeline_id!r}: {what} refused: not registered (closed, or never registered)"
            )

    # -- GPUs -------------------------------------------------------------------------------------

    def signal_demand(self, rollout_id: int, step_target: int) -> Grant:
        """Pre-signal rollout ``rollout_id`` of ``step_target`` samples and block until at least
        one engine of the pipeline is awake (see ``rlix_signal_demand``)."""
        grant = self.hooks.signal_demand(
            pipeline_id=self.pipeline_id, rollout_id=rollout_id, step_target=step_target, timeout_s=self.timeout_s
        )
        if grant.scheduled:
            log.info(
                "rlix: rollout %d of %r may start: DP ranks %s awake after %.2fs (demand %d samples)",
                rollout_id,
                self.pipeline_id,
                list(grant.dp_ranks),
                grant.waited_s,
                step_target,
            )
        return grant

    def acquire(self, cluster: str, priority: int) -> Grant:
        """Block until ``cluster``'s GPUs are granted at ``priority``; release with
        :meth:`release` in a ``finally``."""
        grant = self.hooks.request_gpus(
            pipeline_id=self.pipeline_id, cluster=cluster, priority=priority, timeout_s=self.timeout_s
        )
        if grant.scheduled:
            log.info(
                "rlix: %r got %s (GPUs %s) at priority %d after %.2fs",
                self.pipeline_id,
                cluster,
                list(grant.gpus),
                int(priority),
                grant.waited_s,
            )
        return grant

    def release(self, cluster: str) -> None:
        self.hooks.release(pipeline_id=self.pipeline_id, cluster=cluster)

    # -- closing ----------------------------------------------------------------------------------

    def close(self, reason: str = "finished") -> Exception | None:
        """Give everything back: the framework's own steps first (:meth:`closing_steps`), then
        release ``actor_infer`` and every other cluster, unregister, and the framework's steps
        after (:meth:`closed_steps`).

        Safe on any exit path and more than once. Every step runs even when an earlier one fails
        (a dead scheduler must not keep the others from running). Never raises: failures are
        logged at ERROR and the first is returned.
        """
        steps: list[CloseStep] = []
        was_registered = self._registered
        if was_registered:
            steps += self.closing_steps()
            steps.append((f"release {ACTOR_INFER}", lambda: self.release(ACTOR_INFER)))
            steps += [
                (f"release {name}", lambda name=name: self.release(name))  # type: ignore[misc]
                for name in self.clusters
                if name != ACTOR_INFER
            ]
            steps.append(
                ("unregister", lambda: self.hooks.unregister_pipeline(pipeline_id=self.pipeline_id, reason=reason))
            )
        steps += self.closed_steps()
        first: Exception | None = None
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                log.error("rlix: could not %s for pipeline %r: %r", what, self.pipeline_id, exc)
                first = first or exc
        self._registered = False
        if was_registered:
            log.info("rlix: pipeline %r closed (%s)", self.pipeline_id, reason)
        return first

    def closing_steps(self) -> list[CloseStep]:
        """Steps :meth:`close` runs before the releases while registered (e.g. end an open
        progress batch). None by default."""
        return []

    def closed_steps(self) -> list[CloseStep]:
        """Steps :meth:`close` runs after unregistering, registered or not (e.g. withdraw the
        hooks from the framework). None by default."""
        return []


__all__ = ["CloseStep", "PipelineSession"]
