"""The kill path of a pipeline on Ray: every named actor in its namespace.

Used by the orchestrator (an operator kills a pipeline) and by the scheduler (a fenced pipeline's
grace ran out); it lives here so that the scheduler never calls the orchestrator.
"""

from __future__ import annotations

import asyncio

import ray

from .names import pipeline_namespace


async def kill_namespace(pipeline_id: str) -> list[str]:
    """Kill every named actor in the pipeline's namespace (its coordinator and the framework's
    actors; unnamed actors they own die with them, by Ray's owner fate-sharing). Returns the names
    that were there (each killed here or already dying)."""
    namespace = pipeline_namespace(pipeline_id)
    named = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
    names = sorted(entry["name"] for entry in named if entry.get("namespace") == namespace)
    for name in names:
        try:
            handle = await asyncio.to_thread(ray.get_actor, name, namespace=namespace)
        except ValueError:
            continue  # it died meanwhile (an owner killed just before took it along)
        ray.kill(handle, no_restart=True)
    return names


__all__ = ["kill_namespace"]
