"""One TransferQueue per verl job, so that jobs sharing a Ray cluster keep their samples apart.

verl 0.9.1's v1 trainer moves every sample through TransferQueue, whose controller is a named
actor in a fixed namespace: ``TransferQueueController`` in ``transfer_queue``
(``transfer_queue/interface.py``, looked up by every ``tq.init()``; the RayStorage backend does
the same with ``RayObjectRefStorage``). Two jobs on one cluster therefore share one queue: one
job's rollout consumes the other's samples, and the first job to exit kills the controller
(``tq.close()`` in ``main_ppo``) while the other still uses it.

:func:`install` gives each Ray job its own namespace for those actors,
``transfer_queue-<ray job id>``, by changing how the ``transfer_queue`` modules see Ray: their
module-level ``ray`` and actor classes are replaced by proxies that rewrite ``namespace=
"transfer_queue"`` and pass everything else through. verl's and TransferQueue's files are not
touched. Every process of a verl job belongs to the Ray job of its driver, so all of them agree
on the namespace; a process of another job never sees it.

It runs when verl loads the integration's entry point, in every process that imports verl,
before any ``tq.init()``.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

log = logging.getLogger(__name__)

#: The namespace TransferQueue hard-codes for its named actors.
SHARED_NAMESPACE = "transfer_queue"
#: Modules of TransferQueue that name actors, and the actor classes each creates by name.
NAMED_ACTORS = {
    "transfer_queue.interface": ("TransferQueueController",),
    "transfer_queue.storage.clients.ray_storage_client": ("RayObjectRefStorage",),
}


def job_namespace() -> str:
    """The namespace of this process's Ray job for TransferQueue's named actors."""
    import ray

    return f"{SHARED_NAMESPACE}-{ray.get_runtime_context().get_job_id()}"


def isolated(namespace: Any) -> Any:
    """``"transfer_queue"`` -> this job's namespace; any other namespace unchanged."""
    return job_namespace() if namespace == SHARED_NAMESPACE else namespace


class _JobRay:
    """The ``ray`` module as TransferQueue sees it: named-actor lookups go to this job's
    namespace."""

    def __init__(self, ray_module: Any) -> None:
        self._ray = ray_module

    def get_actor(self, name: str, namespace: str | None = None) -> Any:
        return self._ray.get_actor(name, namespace=isolated(namespace))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ray, name)


class _JobActorClass:
    """A Ray actor class whose ``.options(namespace=...)`` is this job's namespace."""

    def __init__(self, actor_class: Any) -> None:
        self._actor_class = actor_class

    def options(self, **options: Any) -> Any:
        if "namespace" in options:
            options["namespace"] = isolated(options["namespace"])
        return self._actor_class.options(**options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._actor_class, name)


def install() -> bool:
    """Isolate TransferQueue's named actors per Ray job (idempotent). False when TransferQueue
    is not installed (nothing to isolate).

    :raises AttributeError: a TransferQueue whose modules no longer have the names patched here
        (a version this integration was not written for).
    """
    try:
        modules: dict[str, Any] = {name: importlib.import_module(name) for name in NAMED_ACTORS}
    except ImportError:
        return False
    for name, module in modules.items():
        if not isinstance(module.ray, _JobRay):
            module.ray = _JobRay(module.ray)
        for actor in NAMED_ACTORS[name]:
            current = getattr(module, actor)
            if not isinstance(current, _JobActorClass):
                setattr(module, actor, _JobActorClass(current))
    return True


__all__ = ["NAMED_ACTORS", "SHARED_NAMESPACE", "install", "isolated", "job_namespace"]
