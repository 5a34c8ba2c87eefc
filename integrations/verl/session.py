"""One verl job's conversation with the scheduler, in verl's terms.

:class:`RlixSession` is the only place the verl integration calls demand-side and lifecycle
hooks, always through :class:`rlix_plugin.RlixHooks`. It knows nothing of verl's classes: the
trainer tells it what happened (prompts submitted, groups finished, engines asleep) and it turns
that into hook calls, so its order and units can be tested without verl.

Units: progress counts **samples**. A step's target is ``prompts × rollout.n``; every finished
prompt group bumps by its group size.

Thread-safety: progress calls (:meth:`rollout_submitted`, :meth:`groups_completed`,
:meth:`end_rollout`) may come from the trainer thread and from the progress pump's thread at the
same time; a lock keeps the open batch's counters and the begin / bump / end order consistent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, Grant
from rlix_plugin.integrations.verl import LOGGER_NAME

if TYPE_CHECKING:
    from rlix_plugin import RlixHooks
    from rlix_plugin.hookspecs import ClusterSpec

log = logging.getLogger(LOGGER_NAME)


class RlixSession:
    """Registers one pipeline, tracks its open progress batch, and releases everything it holds
    when closed.

    :param hooks: The front end to call.
    :param pipeline_id: The pipeline's name on the scheduler.
    :param clusters: Cluster name to :class:`~rlix_plugin.hookspecs.ClusterSpec`, registered by
        :meth:`open`.
    :param timeout_s: Longest wait of :meth:`signal_demand` and :meth:`acquire`.
    :param samples_per_step: ``step_target`` of :meth:`signal_demand` (prompts × ``rollout.n``).
    """

    def __init__(
        self,
        hooks: RlixHooks,
        *,
        pipeline_id: str,
        clusters: Mapping[str, ClusterSpec],
        timeout_s: float,
        samples_per_step: int,
    ) -> None:
        if samples_per_step <= 0:
            raise ValueError(f"samples_per_step must be > 0, got {samples_per_step}")
        self.hooks = hooks
        self.pipeline_id = pipeline_id
        self.clusters = dict(clusters)
        self.timeout_s = timeout_s
        self.samples_per_step = samples_per_step
        self._lock = threading.Lock()
        self._registered = False
        self._batch_open = False
        self._submitted = 0
        self._completed = 0
        self._weight_version = 0

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def registered(self) -> bool:
        return self._registered

    def open(self) -> None:
        """Register the pipeline (once)."""
        if self._registered:
            return
        self.hooks.register_pipeline(pipeline_id=self.pipeline_id, clusters=self.clusters)
        self._registered = True
        log.info(
            "rlix: pipeline %r registered (%s)",
            self.pipeline_id,
            ", ".join(f"{name}: tp={spec.tp_size} gpus={list(spec.gpus)}" for name, spec in self.clusters.items()),
        )

    def close(self, reason: str) -> Exception | None:
        """Give everything back: end an open batch, release both clusters, unregister.

        Safe to call on any exit path and more than once. Each step runs even when an earlier
        one fails (a dead scheduler must not keep the others from running). Never raises, since
        it runs in ``finally`` blocks where an error would mask the one being unwound: failures
        are logged at ERROR and the first is returned.
        """
        if not self._registered:
            return None
        first_error: BaseException | None = None
        steps = (
            ("end the progress batch", self.end_rollout),
            ("release actor_infer", lambda: self.release(ACTOR_INFER)),
            ("release actor_train", lambda: self.release(ACTOR_TRAIN)),
            ("unregister", lambda: self.hooks.unregister_pipeline(pipeline_id=self.pipeline_id, reason=reason)),
        )
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                log.error("rlix: could not %s for pipeline %r: %r", what, self.pipeline_id, exc)
                first_error = first_error or exc
        self._registered = False
        log.info("rlix: pipeline %r closed (%s)", self.pipeline_id, reason)
        return first_error

    # -- GPUs -------------------------------------------------------------------------------------

    def signal_demand(self, rollout_id: int) -> Grant:
        """Pre-signal the next rollout and wait until at least one engine may run."""
        grant = self.hooks.signal_demand(
            pipeline_id=self.pipeline_id,
            rollout_id=rollout_id,
            step_target=self.samples_per_step,
            timeout_s=self.timeout_s,
        )
        if grant.scheduled:
            log.info(
                "rlix: rollout %d of %r may start: dp ranks %s awake after %.2fs",
                rollout_id, self.pipeline_id, list(grant.dp_ranks), grant.waited_s,
            )
        return grant

    def acquire(self, cluster: str, priority: int) -> Grant:
        """Block until ``cluster``'s GPUs are granted at ``priority``."""
        grant = self.hooks.request_gpus(
            pipeline_id=self.pipeline_id, cluster=cluster, priority=priority, timeout_s=self.timeout_s
        )
        if grant.scheduled:
            log.info(
                "rlix: %r got %s at priority %d after %.2fs", self.pipeline_id, cluster, int(priority), grant.waited_s
            )
        return grant

    def release(self, cluster: str) -> None:
        self.hooks.release(pipeline_id=self.pipeline_id, cluster=cluster)

    # -- progress (samples) -----------------------------------------------------------------------

    def rollout_submitted(self, samples: int, weight_version: int) -> None:
        """``samples`` more samples were dispatched for the current step.

        The first submission of a step opens the batch with that target. A later one (verl's
        replay buffer refills filtered or failed groups through the same path) re-opens it with
        the larger target and the count so far carried over, which the contract defines as
        closing the stale batch and starting a new one.
        """
        if samples <= 0:
            return
        with self._lock:
            if not self._batch_open:
                self._batch_open = True
                self._submitted = 0
                self._completed = 0
            self._submitted += samples
            self._weight_version = weight_version
            self.hooks.begin_progress_batch(
                pipeline_id=self.pipeline_id,
                step_target=self._submitted,
                target_weight_version=weight_version,
                initial_completed=min(self._completed, self._submitted),
            )

    def groups_completed(self, samples: int) -> None:
        """Finished groups worth ``samples`` samples were accepted. Dropped when no batch is open
        (a straggler from a step that already ended must not count towards the next one)."""
        if samples <= 0:
            return
        with self._lock:
            if not self._batch_open:
                return
            self._completed += samples
            self.hooks.bump_completed(
                pipeline_id=self.pipeline_id, count=samples, target_weight_version=self._weight_version
            )

    def end_rollout(self) -> None:
        """Close the step's batch, if one is open."""
        with self._lock:
            if not self._batch_open:
                return
            self._batch_open = False
            self.hooks.end_progress_batch(pipeline_id=self.pipeline_id)
            log.info(
                "rlix: rollout of %r done: %d of %d samples", self.pipeline_id, self._completed, self._submitted
            )

    @property
    def progress(self) -> tuple[int, int]:
        """``(completed, submitted)`` samples of the open (or last) batch."""
        with self._lock:
            return self._completed, self._submitted


__all__ = ["RlixSession"]
