"""The Ray deployment of rlix: the shared scheduler, the orchestrator, per-pipeline coordinators,
and the client that reaches them.

Actors (names in :mod:`.names`):

* ``rlix:scheduler`` (namespace ``rlix``, detached) -- :mod:`.scheduler_actor`, hosts the
  scheduler service shared by every pipeline on the cluster;
* ``rlix:orchestrator`` (namespace ``rlix``, detached) -- :mod:`.orchestrator`, pipeline ids,
  registration and admission, killing a pipeline's namespace, shutdown;
* ``rlix:coordinator`` (namespace ``rlix.<pipeline_id>``, owned by the pipeline's process) --
  :mod:`.coordinator`, carries the scheduler's resizes to the pipeline's ``rlix_resize_infer``,
  served in the pipeline's process by :mod:`.supply`.

:func:`connect` (:mod:`.client`) attaches to them from a driver, an actor or a task. The ``ray``
backend (:mod:`rlix_plugin.backends.ray`) answers the hooks through it.

Importing this package imports ray.
"""

from __future__ import annotations

from .client import RlixClient, connect, detect_pool
from .names import NAMESPACE, ORCHESTRATOR_NAME, SCHEDULER_NAME, pipeline_namespace

__all__ = [
    "NAMESPACE",
    "ORCHESTRATOR_NAME",
    "RlixClient",
    "SCHEDULER_NAME",
    "connect",
    "detect_pool",
    "pipeline_namespace",
]
