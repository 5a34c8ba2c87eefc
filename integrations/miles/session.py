"""One miles pipeline's conversation with the scheduler, in miles' terms.

:class:`MilesSession` is what a miles driver (or rlix's pipeline actor) holds per pipeline. It
registers the pipeline, installs the hooks into its ``RolloutManager`` (:mod:`.install`), and
gives the train loop its step hooks:

* :meth:`~MilesSession.signal_rollout_demand` (and ``_async``) -- bound to ``run_async_train_loop``'s
  ``signal_demand`` step hook: before each rollout is dispatched, write the durable open demand
  and block until at least one engine of the pipeline is awake;
* :meth:`~MilesSession.request_train` / :meth:`~MilesSession.release_train` (and ``_async``) --
  the ``actor_train`` claim of ``before_step`` and its release in ``after_step`` / ``release_only``.

Demand is refused until :meth:`~MilesSession.install` succeeded: a rollout whose progress would
reach miles' ``NoOpRLixHooks`` is the seed bug, so forgetting the install fails at the first
rollout with :class:`~.errors.HooksNotInstalledError`, before anything is dispatched.

Units: the miles side takes groups (``step_target`` defaults to ``rollout_batch_size``); the
hooks get samples (:mod:`.units`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from rlix_plugin.frontend import DEFAULT_TIMEOUT_S, RlixHooks
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, Grant, InvalidRequestError, Priority

from . import LOGGER_NAME
from .errors import HooksNotInstalledError
from .memory import FreeMemoryCheck
from .units import GroupUnits, check_groups

log = logging.getLogger(LOGGER_NAME)


class MilesSession:
    """Registers one miles pipeline, installs its hooks, and calls the demand-side hooks.

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
    """

    def __init__(
        self,
        *,
        pipeline_id: str,
        clusters: Mapping[str, ClusterSpec],
        n_samples_per_prompt: int,
        rollout_batch_size: int,
        hooks: RlixHooks | None = None,
        backend: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
        autoload: bool | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if ACTOR_INFER not in clusters:
            raise InvalidRequestError(f"pipeline {pipeline_id!r}: clusters need {ACTOR_INFER!r}, got {sorted(clusters)}")
        self.pipeline_id = pipeline_id
        self.clusters = dict(clusters)
        self.units = GroupUnits(n_samples_per_prompt)
        self.rollout_batch_size = check_groups("rollout_batch_size", rollout_batch_size)
        self.backend_options = dict(backend_options or {})
        self.autoload = autoload
        if hooks is None:
            from rlix_plugin import get_plugin_manager

            hooks = RlixHooks(get_plugin_manager(backend, backend_options=dict(self.backend_options), autoload=autoload))
        self.hooks = hooks
        self.timeout_s = timeout_s
        self.registered = False
        #: Set by a successful :meth:`install`: the supply plugin and the verified manager hooks.
        self.installation: Any = None

    @property
    def backend(self) -> str:
        """The resolved backend name of the front end's plugin manager."""
        return self.hooks.plugin_manager.backend_name

    @property
    def installed(self) -> bool:
        return self.installation is not None

    # -- lifecycle --------------------------------------------------------------------------------

    def register(self) -> None:
        """Register the pipeline with the scheduler (once; later calls do nothing)."""
        if self.registered:
            return
        self.hooks.register_pipeline(pipeline_id=self.pipeline_id, clusters=self.clusters)
        self.registered = True
        log.info(
            "rlix: pipeline %r registered (%s)", self.pipeline_id,
            "; ".join(f"{name}: tp={spec.tp_size} gpus={list(spec.gpus)}" for name, spec in self.clusters.items()),
        )

    def install(
        self,
        rollout_manager: Any,
        *,
        sync_weights: Any,
        engine_index_of_rank: Sequence[int] | None = None,
        timeout_s: float | None = None,
        post_sleep_vram_threshold_gb: float | None = None,
        free_memory_check: FreeMemoryCheck | None = None,
    ) -> MilesSession:
        """Install the hooks into ``rollout_manager`` and verify them; see :func:`.install.install_session`."""
        from .install import install_session

        install_session(self, rollout_manager, sync_weights=sync_weights, engine_index_of_rank=engine_index_of_rank,
                        timeout_s=timeout_s, post_sleep_vram_threshold_gb=post_sleep_vram_threshold_gb,
                        free_memory_check=free_memory_check)
        return self

    def close(self, reason: str = "finished") -> Exception | None:
        """Give everything back: release both clusters, unregister, uninstall.

        Safe on any exit path and more than once; every step runs even if an earlier one fails.
        Never raises (it runs in ``finally`` blocks, where an error would mask the one being
        unwound): failures are logged at ERROR and the first is returned.
        """
        first: Exception | None = None
        steps = []
        if self.registered:
            steps += [
                ("release actor_infer", lambda: self.hooks.release(pipeline_id=self.pipeline_id, cluster=ACTOR_INFER)),
                *(
                    (f"release {name}", lambda name=name: self.hooks.release(pipeline_id=self.pipeline_id, cluster=name))
                    for name in self.clusters if name != ACTOR_INFER
                ),
                ("unregister", lambda: self.hooks.unregister_pipeline(pipeline_id=self.pipeline_id, reason=reason)),
            ]
        if self.installation is not None:
            steps.append(("uninstall", self.installation.uninstall))
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                log.error("rlix: could not %s for pipeline %r: %r", what, self.pipeline_id, exc)
                first = first or exc
        if self.registered:
            log.info("rlix: pipeline %r closed (%s)", self.pipeline_id, reason)
        self.registered = False
        self.installation = None
        return first

    # -- the train loop's step hooks --------------------------------------------------------------

    def signal_rollout_demand(self, rollout_id: int, step_target: int | None = None) -> Grant:
        """Pre-signal rollout ``rollout_id`` and block until at least one engine is awake.

        Call it before the rollout is dispatched (miles' ``signal_demand`` step hook).

        :param step_target: Groups the rollout must collect (default ``rollout_batch_size``).
        :returns: The grant (awake DP ranks and their GPUs).
        :raises HooksNotInstalledError: :meth:`install` never succeeded for this pipeline.
        :raises SchedulerTimeoutError: no engine woke within ``timeout_s``; the message carries the
            scheduler's diagnostic (open demand, who holds each GPU, pending requests).
        :raises PipelineGoneError: the pipeline was unregistered or fenced meanwhile.
        """
        if self.installation is None:
            raise HooksNotInstalledError(
                f"pipeline {self.pipeline_id!r}: demand for rollout {rollout_id} refused: the rlix hooks were never "
                "installed on its miles RolloutManager, so every progress call of the rollout function would reach "
                "miles' NoOpRLixHooks and the scheduler would never see the rollout. Call "
                "rlix_plugin.integrations.miles.install(rollout_manager, ...) (or session.install(...)) at pipeline "
                "init, after the RolloutManager exists and before the first rollout."
            )
        if not self.registered:
            raise InvalidRequestError(f"pipeline {self.pipeline_id!r} is not registered (closed, or never registered)")
        groups = check_groups("step_target", self.rollout_batch_size if step_target is None else step_target)
        grant = self.hooks.signal_demand(
            pipeline_id=self.pipeline_id, rollout_id=rollout_id, step_target=self.units.samples(groups),
            timeout_s=self.timeout_s,
        )
        if grant.scheduled:
            log.info(
                "rlix: rollout %d of %r may start: DP ranks %s awake after %.2fs (demand %d samples = %d groups x %d)",
                rollout_id, self.pipeline_id, list(grant.dp_ranks), grant.waited_s, self.units.samples(groups), groups,
                self.units.n_samples_per_prompt,
            )
        return grant

    async def signal_rollout_demand_async(self, rollout_id: int, step_target: int | None = None) -> Grant:
        """:meth:`signal_rollout_demand` for an async train loop: the wait runs in a worker thread,
        so the event loop (and other pipelines' loops on it) keeps running."""
        return await asyncio.to_thread(self.signal_rollout_demand, rollout_id, step_target)

    def request_train(self, cluster: str = ACTOR_TRAIN, priority: int = Priority.ACTOR_TRAINING) -> Grant:
        """Claim the training GPUs (``before_step``); preempts this and other pipelines' engines
        on them. Release with :meth:`release_train` in a ``finally``."""
        grant = self.hooks.request_gpus(pipeline_id=self.pipeline_id, cluster=cluster, priority=priority,
                                        timeout_s=self.timeout_s)
        if grant.scheduled:
            log.info("rlix: %r got %s (GPUs %s) after %.2fs", self.pipeline_id, cluster, list(grant.gpus), grant.waited_s)
        return grant

    def release_train(self, cluster: str = ACTOR_TRAIN) -> None:
        """Give the training GPUs back (``after_step``, or ``release_only`` on failure)."""
        self.hooks.release(pipeline_id=self.pipeline_id, cluster=cluster)

    async def request_train_async(self, cluster: str = ACTOR_TRAIN, priority: int = Priority.ACTOR_TRAINING) -> Grant:
        return await asyncio.to_thread(self.request_train, cluster, priority)

    async def release_train_async(self, cluster: str = ACTOR_TRAIN) -> None:
        await asyncio.to_thread(self.release_train, cluster)


__all__ = ["MilesSession"]
