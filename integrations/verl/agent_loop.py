"""verl's agent-loop manager and worker, with per-group progress for rlix.

Selected by class path: ``+actor_rollout_ref.rollout.agent.agent_loop_manager_class=``
:data:`MANAGER_CLASS_PATH` (the ``rlix_sync`` trainer fills that key in when rlix is enabled
and it is unset). Generation is verl's own; the only additions are the worker's group counter
(:class:`~.progress.GroupProgressMixin`) and a :class:`~.progress.ProgressPump` the trainer
attaches for the length of ``fit``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import ray
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ, AgentLoopWorkerTQ

from rlix_plugin.integrations.verl import MANAGER_CLASS_PATH
from rlix_plugin.integrations.verl.progress import POLL_S, GroupProgressMixin, ProgressPump

log = logging.getLogger(__name__)


class _RlixAgentLoopWorkerTQ(GroupProgressMixin, AgentLoopWorkerTQ.__ray_actor_class__):  # type: ignore[misc,name-defined]
    """verl's TransferQueue agent-loop worker that also counts finished training groups."""


# A Ray actor class cannot be subclassed directly; subclass the plain class and wrap it again.
RlixAgentLoopWorkerTQ = ray.remote(_RlixAgentLoopWorkerTQ)


class RlixAgentLoopManagerTQ(AgentLoopManagerTQ):
    """verl's ``AgentLoopManagerTQ`` whose workers report per-group completion.

    Built by verl with ``create(config=, llm_client=, teacher_client=,
    reward_loop_worker_handles=)``, exactly like the class it extends.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # AgentLoopManagerTQ.__init__ assigns its own worker class before calling the base
        # __init__, so ours can only be set afterwards; workers are created later, in create().
        self.agent_loop_workers_class = RlixAgentLoopWorkerTQ
        self._rlix_pump: ProgressPump | None = None

    def rlix_attach(self, sink: Callable[[int], None], poll_s: float = POLL_S) -> None:
        """Start handing finished-sample counts to ``sink`` (called by the trainer in ``fit``)."""
        self.rlix_detach()
        self._rlix_pump = ProgressPump(self.agent_loop_workers, sink, poll_s=poll_s).start()

    def rlix_flush(self, timeout_s: float = 10.0) -> bool:
        """Deliver every count the workers hold now; False if it did not finish in time."""
        pump = self._rlix_pump
        if pump is None:
            return True
        delivered = pump.flush(timeout_s)
        if not delivered:
            log.warning("rlix: progress of the last groups was not delivered within %.1fs", timeout_s)
        return delivered

    def rlix_detach(self) -> None:
        pump, self._rlix_pump = self._rlix_pump, None
        if pump is not None:
            pump.stop()


__all__ = ["MANAGER_CLASS_PATH", "RlixAgentLoopManagerTQ", "RlixAgentLoopWorkerTQ"]
