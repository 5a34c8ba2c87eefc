"""One verl job's conversation with the scheduler, in verl's terms.

:class:`VerlSession` is the only place the verl integration calls demand-side and lifecycle
hooks, always through :class:`rlix_plugin.Hooks`. It knows nothing of verl's classes: the
trainer tells it what happened (prompts submitted, groups finished, engines asleep) and it turns
that into hook calls, so its order and units can be tested without verl.

Units: progress counts **samples**. A step's target is ``prompts × rollout.n``; every finished
prompt group bumps by its group size.

Rollout epoch: every progress batch carries the ``rollout_id`` of the latest
:meth:`~VerlSession.signal_demand` (the step about to roll out), taken when the batch opens, so
a straggler of a step that ended is ignored by the scheduler even if it arrives late.

Thread-safety: progress calls (:meth:`rollout_submitted`, :meth:`groups_completed`,
:meth:`end_rollout`) may come from the trainer thread and from the progress pump's thread at the
same time; a lock keeps the open batch's counters and the begin / bump / end order consistent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from rlix_plugin.hookspecs import Grant, InvalidRequestError
from rlix_plugin.session import CloseStep, PipelineSession

if TYPE_CHECKING:
    from rlix_plugin import Hooks
    from rlix_plugin.hookspecs import ClusterSpec, PipelineLimits

log = logging.getLogger(__name__)


class VerlSession(PipelineSession):
    """A :class:`~rlix_plugin.session.PipelineSession` that also tracks the open progress batch
    of the current step; closing ends that batch before the releases.

    :param samples_per_step: ``step_target`` of :meth:`signal_demand` (prompts × ``rollout.n``).
    :param limits: What the job declares at registration; the trainer sets ``samples_per_engine``
        from the rollout config (:func:`~.config.samples_per_engine`).
    Other parameters: those of :class:`~rlix_plugin.session.PipelineSession`.
    """

    def __init__(
        self,
        hooks: Hooks,
        *,
        pipeline_id: str,
        clusters: Mapping[str, ClusterSpec],
        timeout_s: float,
        samples_per_step: int,
        limits: PipelineLimits | None = None,
    ) -> None:
        if isinstance(samples_per_step, bool) or not isinstance(samples_per_step, int) or samples_per_step <= 0:
            raise InvalidRequestError(f"samples_per_step must be an int > 0, got {samples_per_step!r}")
        super().__init__(hooks, pipeline_id=pipeline_id, clusters=clusters, timeout_s=timeout_s, limits=limits)
        self.samples_per_step = samples_per_step
        self._lock = threading.Lock()
        self._batch_open = False
        self._submitted = 0
        self._completed = 0
        self._weight_version = 0
        #: The rollout the latest signal_demand named (0 before any), and the open batch's.
        self._rollout_id = 0
        self._batch_rollout = 0

    def closing_steps(self) -> list[CloseStep]:
        return [("end the progress batch", self.end_rollout)]

    def signal_demand(self, rollout_id: int, step_target: int | None = None) -> Grant:
        """Pre-signal the next rollout (``samples_per_step`` samples unless told otherwise) and
        wait until at least one engine may run. Batches opened from now on belong to ``rollout_id``."""
        grant = super().signal_demand(rollout_id, self.samples_per_step if step_target is None else step_target)
        with self._lock:
            self._rollout_id = rollout_id
        return grant

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
                self._batch_rollout = self._rollout_id
                self._submitted = 0
                self._completed = 0
            self._submitted += samples
            self._weight_version = weight_version
            self.hooks.begin_progress_batch(
                pipeline_id=self.pipeline_id,
                rollout_id=self._batch_rollout,
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
                pipeline_id=self.pipeline_id,
                rollout_id=self._batch_rollout,
                count=samples,
                target_weight_version=self._weight_version,
            )

    def end_rollout(self) -> None:
        """Close the step's batch, if one is open."""
        with self._lock:
            if not self._batch_open:
                return
            self._batch_open = False
            self.hooks.end_progress_batch(pipeline_id=self.pipeline_id, rollout_id=self._batch_rollout)
            log.info("rlix: rollout of %r done: %d of %d samples", self.pipeline_id, self._completed, self._submitted)

    @property
    def progress(self) -> tuple[int, int]:
        """``(completed, submitted)`` samples of the open (or last) batch."""
        with self._lock:
            return self._completed, self._submitted


__all__ = ["VerlSession"]
