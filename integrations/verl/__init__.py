"""verl integration: share GPUs between verl jobs through the rlix hooks (docs/verl.md).

Installed with ``pip install "rlix-plugin[verl]"``; ``import verl`` then loads it through verl's
``verl.plugins`` entry point (:mod:`.entry`), which registers the ``rlix_sync`` trainer mode.
A job opts in with ``trainer.v1.trainer_mode=rlix_sync +trainer.rlix.enable=true``.

Modules, one job each:

* :mod:`.config` -- the ``trainer.rlix`` block, targets and cluster layout (no verl import);
* :mod:`.session` -- the demand-side and lifecycle hook calls of one job (no verl import);
* :mod:`.engines` -- the supply side: ``rlix_resize_infer`` over verl's rollout replicas;
* :mod:`.progress` -- per-group progress from agent-loop workers to the trainer's hooks;
* :mod:`.agent_loop` -- verl's agent-loop manager and worker with that progress;
* :mod:`.trainer` -- the ``rlix_sync`` trainer and its hook points;
* :mod:`.entry` -- what verl's entry point loads.

Importing this package imports neither verl nor ray.
"""

#: ``trainer.v1.trainer_mode`` value of the rlix trainer.
TRAINER_MODE = "rlix_sync"
#: ``actor_rollout_ref.rollout.agent.agent_loop_manager_class`` of the progress-reporting manager.
MANAGER_CLASS_PATH = "rlix_plugin.integrations.verl.agent_loop.RlixAgentLoopManagerTQ"
#: The logger every module of the integration writes to.
LOGGER_NAME = "rlix_plugin.integrations.verl"

__all__ = ["LOGGER_NAME", "MANAGER_CLASS_PATH", "TRAINER_MODE"]
