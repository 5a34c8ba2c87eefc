"""A base for the supply side of one pipeline: what a framework integration subclasses."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from rlix_plugin.hookspecs import hookimpl


class PipelineEngines:
    """Answers ``rlix_resize_infer`` for the pipeline ``self.pipeline_id`` and no other.

    Subclasses set ``pipeline_id`` and implement :meth:`resize`; register an instance on the
    pipeline's plugin manager. Other pipelines' resizes get ``None``, so that the call reaches
    their owner (the hook is first-result).

    The scheduler may call ``rlix_resize_infer`` for one pipeline from several threads at once
    (moves on disjoint DP ranks). This base runs one :meth:`resize` at a time, so a subclass need
    not be thread-safe; one that is, and whose engines switch in parallel, sets
    ``concurrent_resizes = True``.
    """

    pipeline_id: str
    concurrent_resizes = False

    @hookimpl
    def rlix_resize_infer(
        self, pipeline_id: str, dp_ranks_to_remove: tuple[int, ...], dp_ranks_to_add: tuple[int, ...]
    ) -> tuple[int, ...] | None:
        if pipeline_id != self.pipeline_id:
            return None
        if self.concurrent_resizes:
            return self.resize(dp_ranks_to_remove, dp_ranks_to_add)
        lock = self.__dict__.get("_resize_lock")
        if lock is None:  # per instance, made on first use: subclasses need not call a base __init__
            lock = self.__dict__.setdefault("_resize_lock", threading.Lock())
        with lock:
            return self.resize(dp_ranks_to_remove, dp_ranks_to_add)

    def resize(self, remove: Sequence[int] = (), add: Sequence[int] = ()) -> tuple[int, ...]:
        """Sleep the engines of ``remove`` (pausing and retracting their in-flight work first),
        then wake those of ``add`` with the latest weights; return the DP ranks awake afterwards,
        sorted. Must be idempotent per rank."""
        raise NotImplementedError


__all__ = ["PipelineEngines"]
