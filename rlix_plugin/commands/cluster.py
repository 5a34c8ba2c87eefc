"""Reaching a Ray cluster's scheduler from an operator command (never creating one)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def scheduler_client(address: str) -> Iterator[Any]:
    """The :class:`~rlix_plugin.ray.client.RlixClient` of the cluster at ``address``. An operator
    looking must change nothing: a cluster without a scheduler, or with one of another protocol,
    is an error (never started, never replaced). Ray is shut down afterwards if this process
    connected only for the command (the cluster keeps running)."""
    import ray

    from rlix_plugin.ray.client import connect

    started_ray = not ray.is_initialized()
    init_options = {"logging_level": "ERROR", "log_to_driver": False} if started_ray else None
    try:
        yield connect(address, create_if_missing=False, init_options=init_options, replace_stale=False)
    finally:
        if started_ray:
            ray.shutdown()


__all__ = ["scheduler_client"]
