"""Where the rlix actors live on a Ray cluster: names and namespaces, in one place.

The scheduler and the orchestrator are detached, named actors in namespace ``rlix``, shared by
every job on the cluster. Each pipeline has its own namespace, derived from its id, holding its
coordinator and (by convention) the framework's named actors of that pipeline, so that the
orchestrator can kill a pipeline and everything in its namespace.
"""

from __future__ import annotations

NAMESPACE = "rlix"
SCHEDULER_NAME = "rlix:scheduler"
ORCHESTRATOR_NAME = "rlix:orchestrator"
COORDINATOR_NAME = "rlix:coordinator"

#: Bumped when the actors' method signatures change: a scheduler left running by an older
#: version is replaced when idle, and refused (with a message) while it still serves pipelines.
PROTOCOL = 3

#: A resource only the head node has (Ray adds it): pins the control plane there, so that it
#: lives as long as the cluster and never on a node an autoscaler may remove.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def pipeline_namespace(pipeline_id: str) -> str:
    """The namespace of a pipeline's actors: ``rlix.<pipeline_id>``."""
    return f"{NAMESPACE}.{pipeline_id}"


__all__ = [
    "COORDINATOR_NAME",
    "HEAD_NODE_RESOURCE",
    "NAMESPACE",
    "ORCHESTRATOR_NAME",
    "PROTOCOL",
    "SCHEDULER_NAME",
    "pipeline_namespace",
]
