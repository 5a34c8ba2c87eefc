"""One miles pipeline's conversation with the scheduler, in miles' terms.

:class:`MilesSession` is what a miles driver (or rlix's pipeline actor) holds per pipeline. It
registers the pipeline, installs the hooks into its ``RolloutManager`` (:mod:`.install`), and
gives the train loop its step hooks:

* :meth:`~MilesSession.signal_rollout_demand` (and ``_async``) -- bound to ``run_async_train_loop``'s
  ``signal_demand`` step hook: before each rollout is dispatched, write the durable open demand
  and block until at least one engine of the pipeline is awake;
* :meth:`~MilesSession.request_train` / :meth:`~MilesSession.release_train` (and ``_async``) --
  the ``actor_train`` claim of ``before_step`` and its release in ``after_step`` / ``release_only``.

Demand is refused until :func:`~.install.install` succeeded: a rollout whose progress would
reach miles' ``NoOpRLixHooks`` is failure mode F2 of docs/design.md, so forgetting the install fails at the first
rollout with :class:`~.errors.HooksNotInstalledError`, before anything is dispatched.

Units: the miles side takes groups (``step_target`` defaults to ``rollout_batch_size``); the
hooks get samples (:mod:`.units`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rlix_plugin.frontend import DEFAULT_TIMEOUT_S, Hooks
from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ACTOR_TRAIN,
    ClusterSpec,
    Grant,
    InvalidRequestError,
    PipelineLimits,
    Priority,
)
from rlix_plugin.session import CloseStep, PipelineSession

from .errors import HooksNotInstalledError
from .units import GroupUnits, check_groups

if TYPE_CHECKING:
    from .install import Installation

log = logging.getLogger(__name__)


class MilesSession(PipelineSession):
    """A :class:`~rlix_plugin.session.PipelineSession` in miles' terms: groups, the train loop's
    step hooks, and the installation of the hooks into the ``RolloutManager``, which closing
    takes away again. Built by :func:`~.install.install`, the one way in.

    :param pipeline_id: The pipeline's id on the scheduler.
    :param clusters: Cluster name -> :class:`~rlix_plugin.hookspecs.ClusterSpec`; ``actor_infer``
        is required (its DP ranks are the ``RolloutManager``'s engines).
    :param n_samples_per_prompt: miles' group size (``args.n_samples_per_prompt``).
    :param rollout_batch_size: Groups per rollout (``args.rollout_batch_size``), the default step
        target of :meth:`signal_rollout_demand`.
    :param hooks: The front end to call; default: built from ``backend`` and ``backend_options``.
    :param backend: ``noop``, ``local`` or ``ray`` (default ``$RLIX_BACKEND``).
    :param backend_options: Options of the backend (for ``ray``: those of ``rlix_plugin.connect``).
    :param autoload: Load ``rlix_plugin`` entry points (default: the environment decides).
    :param timeout_s: Longest wait of every blocking call (demand, training GPUs).
    :param limits: What the pipeline declares at registration (``samples_per_engine`` in samples,
        the unit of the hooks; see :func:`~.install.install`).
    """

    def __init__(
        self,
        *,
        pipeline_id: str,
        clusters: Mapping[str, ClusterSpec],
        n_samples_per_prompt: int,
        rollout_batch_size: int,
        hooks: Hooks | None = None,
        backend: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
        autoload: bool | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        limits: PipelineLimits | None = None,
    ) -> None:
        if ACTOR_INFER not in clusters:
            raise InvalidRequestError(
                f"pipeline {pipeline_id!r}: clusters need {ACTOR_INFER!r}, got {sorted(clusters)}"
            )
        units = GroupUnits(n_samples_per_prompt)
        batch = check_groups("rollout_batch_size", rollout_batch_size)
        options = dict(backend_options or {})
        owns_backend = hooks is None
        if hooks is None:
            from rlix_plugin import get_plugin_manager

            hooks = Hooks(get_plugin_manager(backend, backend_options=dict(options), autoload=autoload))
        super().__init__(hooks, pipeline_id=pipeline_id, clusters=clusters, timeout_s=timeout_s, limits=limits)
        self.units = units
        self.rollout_batch_size = batch
        self.backend_options = options
        self.autoload = autoload
        self._installation: Installation | None = None
        # The backend this session built (not one passed in with ``hooks``) is this session's to
        # close: its threads, and a scheduler made for it alone, end with the session.
        self._owned_backend = hooks.plugin_manager.backend if owns_backend else None
        self._backend_closed = False

    @property
    def backend(self) -> str:
        """The resolved backend name of the front end's plugin manager."""
        return self.hooks.plugin_manager.backend_name

    @property
    def installation(self) -> Installation | None:
        """What :func:`~.install.install` put in place (None until it succeeded, and after close)."""
        return self._installation

    @property
    def installed(self) -> bool:
        return self._installation is not None

    def attach(self, installation: Installation) -> None:
        """Keep ``installation`` (called by :func:`~.install.install` once it verified the hooks);
        closing the session uninstalls it."""
        if self._installation is not None:
            raise InvalidRequestError(f"pipeline {self.pipeline_id!r}: hooks are already installed")
        self._installation = installation

    def register(self) -> None:
        if self._backend_closed:
            raise InvalidRequestError(
                f"pipeline {self.pipeline_id!r}: this session is closed, and the backend it built with it; "
                "install again for a new session"
            )
        super().register()

    def closed_steps(self) -> list[CloseStep]:
        installation, self._installation = self._installation, None
        steps: list[CloseStep] = [("uninstall", installation.uninstall)] if installation is not None else []
        backend, self._owned_backend = self._owned_backend, None
        if backend is not None:
            self._backend_closed = True
            steps.append(("close the backend the session built", backend.close))
        return steps

    # -- the train loop's step hooks --------------------------------------------------------------

    def signal_rollout_demand(self, rollout_id: int, step_target: int | None = None) -> Grant:
        """Pre-signal rollout ``rollout_id`` and block until at least one engine is awake; then
        tell the hooks in the ``RolloutManager``'s process that the next progress batch is rollout
        ``rollout_id`` (its epoch: the scheduler ignores the late progress of older rollouts).

        Call it before the rollout is dispatched (miles' ``signal_demand`` step hook), with the
        rollout id miles passes to the rollout (``generate(rollout_id)``).

        :param step_target: Groups the rollout must collect (default ``rollout_batch_size``).
        :returns: The grant (awake DP ranks and their GPUs).
        :raises HooksNotInstalledError: :func:`~.install.install` never succeeded for this pipeline.
        :raises SchedulerTimeoutError: no engine woke within ``timeout_s``; the message carries the
            scheduler's diagnostic (open demand, who holds each GPU, pending requests).
        :raises PipelineGoneError: the pipeline was unregistered or fenced meanwhile.
        :raises InvalidRequestError: ``rollout_id`` is not an int >= 0 or is older than the
            pipeline's previous rollout (nothing changed).
        """
        if self._installation is None:
            raise HooksNotInstalledError(
                f"pipeline {self.pipeline_id!r}: demand for rollout {rollout_id} refused: the rlix hooks were never "
                "installed on its miles RolloutManager, so every progress call of the rollout function would reach "
                "miles' NoOpRLixHooks and the scheduler would never see the rollout. Call "
                "rlix_plugin.integrations.miles.install(rollout_manager, ...) at pipeline init, after the "
                "RolloutManager exists and before the first rollout."
            )
        self.require_registered(f"demand for rollout {rollout_id}")
        groups = check_groups("step_target", self.rollout_batch_size if step_target is None else step_target)
        grant = self.signal_demand(rollout_id, self.units.samples(groups))
        # The scheduler took rollout_id as the pipeline's epoch: now the hooks in the manager's
        # process tag the rollout's batch with it (before the train loop dispatches the rollout).
        self._installation.set_rollout(rollout_id)
        return grant

    async def signal_rollout_demand_async(self, rollout_id: int, step_target: int | None = None) -> Grant:
        """:meth:`signal_rollout_demand` for an async train loop: the wait runs in a worker thread,
        so the event loop (and other pipelines' loops on it) keeps running."""
        return await asyncio.to_thread(self.signal_rollout_demand, rollout_id, step_target)

    def request_train(self, cluster: str = ACTOR_TRAIN, priority: int = Priority.ACTOR_TRAINING) -> Grant:
        """Claim the training GPUs (``before_step``); preempts this and other pipelines' engines
        on them. Release with :meth:`release_train` in a ``finally``."""
        return self.acquire(cluster, priority)

    def release_train(self, cluster: str = ACTOR_TRAIN) -> None:
        """Give the training GPUs back (``after_step``, or ``release_only`` on failure)."""
        self.release(cluster)

    async def request_train_async(self, cluster: str = ACTOR_TRAIN, priority: int = Priority.ACTOR_TRAINING) -> Grant:
        return await asyncio.to_thread(self.request_train, cluster, priority)

    async def release_train_async(self, cluster: str = ACTOR_TRAIN) -> None:
        await asyncio.to_thread(self.release_train, cluster)


__all__ = ["MilesSession"]
