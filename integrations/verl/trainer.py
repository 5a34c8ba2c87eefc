"""The ``rlix_sync`` trainer mode: verl's sync PPO trainer that asks a scheduler for its GPUs.

Selected with ``trainer.v1.trainer_mode=rlix_sync`` and switched on with
``+trainer.rlix.enable=true``. With ``enable`` false (the default) it is verl's
``PPOTrainerSync`` unchanged and calls no ``rlix_`` hook.

Hook points of one job (``P`` = prompts per step × ``rollout.n``, in samples):

==========================  ===============================================================
verl lifecycle              hooks, in order
==========================  ===============================================================
``init``                    ``register_pipeline``; ``request_gpus(actor_train, INITIALIZATION)``
                            around model and engine construction; ``release``;
                            ``unregister_pipeline`` (init holds nothing once it returns)
``fit`` start               ``register_pipeline``; ``signal_demand(rollout 1, P)``, then the
                            first wake (verl's ``on_init_end`` weight sync)
``_submit_batch_to_rollout`` ``begin_progress_batch(step_target=P)`` before dispatch
agent-loop workers          ``bump_completed(n)`` per finished group of ``n`` samples
``on_sample_end``           engines sleep; ``end_progress_batch``; ``release(actor_infer)``;
                            ``request_gpus(actor_train, ACTOR_TRAINING)``
``on_step_end``             ``release(actor_train)``; ``signal_demand(next rollout, P)``;
                            then the weight update that wakes the engines
``fit`` exit (any)          ``end_progress_batch`` if open; ``release`` both clusters;
                            ``unregister_pipeline``
==========================  ===============================================================

Why two registrations: verl's ``TaskRunner`` builds the agent-loop manager between ``init()``
and ``fit()`` with no hook of the trainer around it, so nothing could release what the job held
if that failed. Each scope (``init``, ``fit``) therefore closes its session on every exit path,
and the job holds nothing in between (its engines asleep, no demand, no GPU).

Who wakes the engines: a scheduled grant means the scheduler already woke the granted DP ranks
through ``rlix_resize_infer`` (:class:`~.engines.VerlEngines`), so the trainer does nothing more;
an unscheduled grant (no scheduler answers, e.g. the ``noop`` backend) means the job owns its
GPUs, and the trainer wakes every replica through verl's weight update, as verl does.

Between rollouts: the job registers how many samples a replica runs at once
(:func:`~.config.samples_per_engine`, 256 with verl's shipped config); with more than one, the
scheduler puts the replicas to sleep as soon as a rollout's last sample is counted, through
``rlix_resize_infer``, and the trainer's sleep in ``on_sample_end`` sleeps only those still awake.

Weights are tagged as verl tags them: :attr:`RlixPPOTrainerSync.rlix_weight_version` is the
version of the trainer's current weights (the checkpoint's step after ``init``, step ``s`` after
training step ``s``), so every wake during step ``s + 1``'s rollout serves version ``s``.

With ``RLIX_TRACE_HOOKS=1`` in the job's environment, the hook trace (logger
``rlix_plugin.trace``) is shown in verl's processes, whose root logger verl sets to WARNING.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import open_dict
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.debug import marked_timer
from verl.workers.rollout.llm_server import FullyAsyncLLMServerClient

from rlix_plugin import session as pipeline_session
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, Grant, PipelineLimits, Priority
from rlix_plugin.integrations.verl import LOGGER_NAME, MANAGER_CLASS_PATH, TRAINER_MODE
from rlix_plugin.integrations.verl.config import (
    RlixVerlConfig,
    check_sleep_frees_memory,
    cluster_specs,
    rollout_group_size,
    samples_per_engine,
    samples_per_step,
)
from rlix_plugin.integrations.verl.engines import VerlEngines, VerlRollout
from rlix_plugin.integrations.verl.session import VerlSession
from rlix_plugin.manager import ENV_TRACE, trace_log

log = logging.getLogger(__name__)
# verl shows a module's INFO lines by giving its logger a level from VERL_LOGGING_LEVEL (the root
# stays at WARNING); do the same for the integration's loggers and the pipeline lifecycle's, so
# the scheduling decisions appear in the job's log.
for _name in (LOGGER_NAME, pipeline_session.__name__):
    logging.getLogger(_name).setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))
if os.environ.get(ENV_TRACE, "").strip().lower() in {"1", "true", "yes", "on"}:
    # The hook trace is logged at INFO; verl's root logger would drop it.
    trace_log.setLevel(logging.INFO)

#: The mode verl's code compares against literally; the trainer runs under it.
VERL_SYNC_MODE = "sync"


def build_hooks(rlix: RlixVerlConfig) -> Any:
    """The hooks front end for this job: ``backend`` and ``address`` passed straight through."""
    from rlix_plugin import Hooks, get_plugin_manager

    return Hooks(get_plugin_manager(rlix.backend, backend_options=rlix.backend_options()))


def _use_progress_manager(config: Any) -> None:
    """Select the agent-loop manager that reports per-group progress, unless the job chose one."""
    agent = config.actor_rollout_ref.rollout.get("agent")
    if agent is None:
        return
    chosen = agent.get("agent_loop_manager_class")
    if chosen:
        if chosen != MANAGER_CLASS_PATH:
            log.warning(
                "rlix: agent_loop_manager_class=%s does not report per-group progress; the scheduler "
                "sees each rollout only begin and end (use %s or a subclass of it)",
                chosen,
                MANAGER_CLASS_PATH,
            )
        return
    # verl's TaskRunner reads this key from the same config object after the trainer is built.
    with open_dict(config):
        agent.agent_loop_manager_class = MANAGER_CLASS_PATH


@register_trainer(TRAINER_MODE)
class RlixPPOTrainerSync(PPOTrainerSync):
    """verl's sync PPO trainer with the rlix hook points (see the module docstring).

    :param config: verl's job config (``DictConfig``).
    :param rlix_hooks: A ready :class:`rlix_plugin.Hooks` to call instead of building one
        from ``trainer.rlix`` (tests, embedding). Ignored when rlix is disabled.
    :raises InvalidRequestError: a bad ``trainer.rlix`` block, a GPU layout rlix cannot
        register, ``free_cache_engine`` off, or a rollout batch (``max_num_seqs``) that is not a
        positive int (the message names the key).
    """

    def __init__(self, config: Any, rlix_hooks: Any = None) -> None:
        self.rlix_config = RlixVerlConfig.from_verl(config)
        if config.trainer.v1.trainer_mode == TRAINER_MODE:
            # verl tests trainer_mode == "sync" literally (replay buffer class, refill and
            # checkpoint paths); under any other name it would silently take the async paths.
            with open_dict(config):
                config.trainer.v1.trainer_mode = VERL_SYNC_MODE
        self._rlix: VerlSession | None = None
        self._rlix_engines: VerlEngines | None = None
        self._rlix_plugin_name: str | None = None
        #: Version of the trainer's current weights (see the module docstring).
        self.rlix_weight_version = 0
        if self.rlix_config.enable:
            check_sleep_frees_memory(config)
            _use_progress_manager(config)
            clusters = cluster_specs(config, self.rlix_config)
            limits = PipelineLimits(samples_per_engine=samples_per_engine(config))
        super().__init__(config=config)
        if not self.rlix_config.enable:
            return
        hooks = rlix_hooks if rlix_hooks is not None else build_hooks(self.rlix_config)
        pipeline_id = self.rlix_config.pipeline_id
        self._rlix = VerlSession(
            hooks,
            pipeline_id=pipeline_id,
            clusters=clusters,
            timeout_s=self.rlix_config.timeout_s,
            samples_per_step=samples_per_step(config),
            limits=limits,
        )
        self._rlix_engines = VerlEngines(pipeline_id, hooks)

    @property
    def rlix_session(self) -> VerlSession | None:
        """The scheduler session, or ``None`` when rlix is disabled."""
        return self._rlix

    @property
    def rlix_engines(self) -> VerlEngines | None:
        return self._rlix_engines

    # -- init -----------------------------------------------------------------------------------

    def init(self) -> None:
        if self._rlix is None:
            return super().init()
        reason = "initialized"
        try:
            self._rlix_open()
            # Building the models and engines takes memory on the training GPUs.
            self._rlix.acquire(ACTOR_TRAIN, Priority.INITIALIZATION)
            try:
                self._setup()
            finally:
                self._rlix.release(ACTOR_TRAIN)
            self._engines.bind(VerlRollout.from_trainer(self))
            self.rlix_weight_version = int(self.global_steps)
            self.on_init_end()
        except BaseException as exc:
            reason = f"init failed: {exc!r}"
            raise
        finally:
            self._rlix_close(reason)

    def get_llm_client(self) -> Any:
        if self._rlix is None:
            return super().get_llm_client()
        # A replica the scheduler puts to sleep aborts its requests; this client re-sends each
        # one, with the tokens it has, to a replica still awake, and waits while none is.
        return self.llm_server_manager.get_client(client_cls=FullyAsyncLLMServerClient, only_hybrid=True)

    def on_init_end(self) -> None:
        if self._rlix is None:
            return super().on_init_end()
        # verl wakes every replica here; under a scheduler the first wake waits for fit(), where
        # a demand signal precedes it (nothing generates before fit).

    # -- fit --------------------------------------------------------------------------------------

    def fit(self, agent_loop_manager: Any) -> Any:
        if self._rlix is None:
            return super().fit(agent_loop_manager)
        reason = "finished"
        attached = False
        try:
            self._rlix_open()
            attach = getattr(agent_loop_manager, "rlix_attach", None)
            if attach is not None:
                attach(self._rlix.groups_completed)
                attached = True
            else:
                log.warning(
                    "rlix: %s reports no per-group progress; use %s",
                    type(agent_loop_manager).__name__,
                    MANAGER_CLASS_PATH,
                )
            grant = self._rlix.signal_demand(rollout_id=self.global_steps + 1)
            self._rlix_wake(grant)
            return super().fit(agent_loop_manager)
        except BaseException as exc:
            # KeyboardInterrupt and SystemExit too: the GPUs must go back whatever stops the job.
            reason = f"failed: {exc!r}"
            raise
        finally:
            detach = getattr(agent_loop_manager, "rlix_detach", None)
            if attached and detach is not None:
                detach()
            # verl's fit returns from inside its loop on the last step, before on_train_end,
            # so the release lives here rather than in a lifecycle method.
            self._rlix_close(reason)

    # -- one step ---------------------------------------------------------------------------------

    def _submit_batch_to_rollout(self, batch: Any) -> int:
        if self._rlix is not None:
            # Open (or grow) the progress batch before anything is dispatched, so no group can
            # finish before its batch exists. Rollouts of step s use the weights of step s - 1.
            self._rlix.rollout_submitted(
                samples=len(batch) * rollout_group_size(self.config),
                weight_version=self.rlix_weight_version,
            )
        return super()._submit_batch_to_rollout(batch)

    def on_sample_end(self) -> None:
        if self._rlix is None:
            return super().on_sample_end()
        self._rlix_flush_progress()
        # verl's sync sleep, through the supply side so it knows which replicas are awake.
        self._engines.sleep_all()
        if self.curr_step_profile:
            self._stop_rollout_profiling()
        self._rlix.end_rollout()
        self._rlix.release(ACTOR_INFER)
        # One request covers the whole training phase: verl runs log-probs, values, critic and
        # actor updates on the same colocated workers, so they need the same GPUs.
        self._rlix.acquire(ACTOR_TRAIN, Priority.ACTOR_TRAINING)

    def on_step_end(self) -> None:
        if self._rlix is None:
            return super().on_step_end()
        self._rlix.release(ACTOR_TRAIN)
        # Step global_steps has trained: its weights are the ones every later wake serves.
        self.rlix_weight_version = int(self.global_steps)
        grant = self._rlix.signal_demand(rollout_id=self.global_steps + 1)
        with marked_timer("update_weights", self.timing_raw, color="red"):
            self._rlix_wake(grant)

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def _engines(self) -> VerlEngines:
        """The supply side; only called while rlix is enabled (it exists from ``__init__`` on)."""
        assert self._rlix_engines is not None, "rlix is not enabled for this trainer"
        return self._rlix_engines

    def _rlix_wake(self, grant: Grant) -> None:
        if grant.scheduled:
            # The scheduler woke the granted ranks through rlix_resize_infer before answering.
            if not self._engines.awake:
                log.warning("rlix: demand granted with dp ranks %s but no replica is awake", list(grant.dp_ranks))
            return
        self._engines.wake_all()

    def _rlix_flush_progress(self) -> None:
        flush = getattr(getattr(self, "agent_loop_manager", None), "rlix_flush", None)
        if flush is not None:
            flush()

    def _rlix_open(self) -> None:
        """Register the pipeline and the engines that answer its resizes (idempotent)."""
        session = self._rlix
        assert session is not None, "rlix is not enabled for this trainer"
        pm = session.hooks.plugin_manager
        if self._rlix_plugin_name is None:
            # The backend calls rlix_resize_infer on this manager; the engines must answer there.
            self._rlix_plugin_name = pm.register(self._engines, name=f"rlix-verl-engines-{session.pipeline_id}")
        session.register()

    def _rlix_close(self, reason: str) -> None:
        if self._rlix is None:
            return
        self._rlix.close(reason)
        pm = self._rlix.hooks.plugin_manager
        if self._rlix_plugin_name is not None and pm.has_plugin(self._rlix_plugin_name):
            pm.unregister(name=self._rlix_plugin_name)
        self._rlix_plugin_name = None


__all__ = ["MANAGER_CLASS_PATH", "TRAINER_MODE", "RlixPPOTrainerSync", "build_hooks"]
