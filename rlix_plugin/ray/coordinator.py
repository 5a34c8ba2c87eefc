"""The per-pipeline coordinator: the scheduler's door into one pipeline's process.

The scheduler resizes a pipeline by calling :meth:`Coordinator.resize` on its coordinator. The
engines, and the framework's ``rlix_resize_infer`` implementation that drives them, live in the
pipeline's process, which may be a Ray driver (no actor anyone can call), an actor or a task. So
the coordinator is a mailbox: the pipeline process long-polls it (:meth:`next_request`, served by
:class:`rlix_plugin.ray.resize_server.ResizeServer`), runs the hook where the engines are, and posts the
result (:meth:`complete`), which answers the scheduler's call. The same code works from drivers,
actors and tasks, and a resize costs two extra local round trips (about 2 ms).

Lifetime: created by the pipeline process, named ``rlix:coordinator`` in the pipeline's namespace,
not detached, so it dies with the process that created it. The scheduler holds a :meth:`watch`
call on it and unregisters the pipeline when the coordinator dies: a crashed pipeline never keeps
its GPUs (docs/design.md, failure modes F3 and F10).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import ray

from rlix_plugin.hookspecs import InvalidRequestError, NotPipelineOwnerError

#: Seconds without any poll from the pipeline process after which a resize fails at once instead
#: of waiting for the scheduler's resize timeout. Longer than a poll interval plus a round trip.
SERVER_GRACE_S = 15.0

#: Marker returned to pollers once the coordinator is closed.
CLOSED = "closed"

#: Options of the coordinator actor. Why each value:
COORDINATOR_OPTIONS: dict[str, Any] = {
    # Its mailbox lives in memory; a restarted coordinator would forget the resize the scheduler is
    # waiting on. Dying instead makes the scheduler fence the pipeline with a clear reason.
    "max_restarts": 0,
    # A resize is not idempotent from the scheduler's side (it checks the awake ranks against
    # its plan); a silent retry could answer a different question. Never retried.
    "max_task_retries": 0,
    # Calls held at once: the scheduler's watch (always), the pipeline's long poll (always), the
    # resizes in flight (one per move involving the pipeline, on disjoint DP ranks: a few), their
    # completions, and status reads. 64 leaves room for all of them several times over, so that
    # a hook that hangs inside a resize never queues the next poll, completion or watch.
    "max_concurrency": 64,
    # A mailbox; it must not take a CPU slot the pipeline's workers need.
    "num_cpus": 0,
}


@dataclass(frozen=True)
class ResizeRequest:
    """One resize for the pipeline process to run."""

    request_id: int
    pipeline_id: str
    dp_ranks_to_remove: tuple[int, ...]
    dp_ranks_to_add: tuple[int, ...]


class ResizeFailedError(RuntimeError):
    """The pipeline's ``rlix_resize_infer`` raised; the message carries its traceback."""


class Coordinator:
    """Mailbox between the scheduler's resize calls and the pipeline process's hook."""

    def __init__(self, pipeline_id: str, namespace: str, resize_token: str,
                 server_grace_s: float = SERVER_GRACE_S) -> None:
        self._pipeline_id = pipeline_id
        self._resize_token = resize_token
        self._namespace = namespace
        self._grace = server_grace_s
        self._ids = itertools.count(1)
        self._queue: deque[ResizeRequest] = deque()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._serving: set[int] = set()
        self._polls = 0
        self._last_seen = time.monotonic()
        self._created = time.time()
        self._resizes = 0
        self._closed_reason: str | None = None
        self._new: asyncio.Event | None = None
        self._closed: asyncio.Event | None = None

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        # Created lazily: asyncio objects must be made on the actor's event loop.
        if self._new is None or self._closed is None:
            self._new, self._closed = asyncio.Event(), asyncio.Event()
        return self._new, self._closed

    # -- called by the scheduler ------------------------------------------------------------------

    async def resize(
        self, resize_token: str, pipeline_id: str, dp_ranks_to_remove: tuple[int, ...],
        dp_ranks_to_add: tuple[int, ...],
    ) -> tuple[int, ...] | None:
        """Have the pipeline process run ``rlix_resize_infer`` and return its answer. Only the
        scheduler may ask: it presents the token the pipeline process gave it at registration.

        :raises NotPipelineOwnerError: a wrong token (nothing is resized).
        :raises ResizeFailedError: the hook raised, nobody serves this pipeline's resizes, or the
            coordinator was closed. The caller's timeout bounds the wait.
        """
        if not isinstance(resize_token, str) or not hmac.compare_digest(resize_token, self._resize_token):
            raise NotPipelineOwnerError(
                f"coordinator of {self._pipeline_id!r}: resizes are taken only from the scheduler it registered with"
            )
        if pipeline_id != self._pipeline_id:
            raise InvalidRequestError(f"coordinator of {self._pipeline_id!r} got a resize for {pipeline_id!r}")
        if self._closed_reason is not None:
            raise ResizeFailedError(f"coordinator of {pipeline_id!r} is closed ({self._closed_reason})")
        idle = time.monotonic() - self._last_seen
        if not self._polls and not self._serving and idle > self._grace:
            raise ResizeFailedError(
                f"no process serves resizes of pipeline {pipeline_id!r}: its last poll ended {idle:.1f}s ago "
                "(the pipeline process is stuck or its resize thread died)"
            )
        new, _ = self._events()
        request = ResizeRequest(next(self._ids), pipeline_id, tuple(dp_ranks_to_remove), tuple(dp_ranks_to_add))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request.request_id] = future
        self._queue.append(request)
        self._resizes += 1
        new.set()
        try:
            return await future
        finally:
            # Answered, failed, or abandoned by the scheduler's timeout: forget it either way.
            self._waiting.pop(request.request_id, None)
            if request in self._queue:
                self._queue.remove(request)

    async def watch(self) -> str:
        """Return only when the coordinator is closed: the scheduler's death watch. While the
        coordinator lives this call stays pending; when it dies, the call fails at once."""
        _, closed = self._events()
        await closed.wait()
        return CLOSED

    # -- called by the pipeline process -----------------------------------------------------------

    async def next_request(self, wait_s: float) -> ResizeRequest | str | None:
        """The next resize to run, ``None`` after ``wait_s`` seconds without one, or ``CLOSED``."""
        new, closed = self._events()
        self._polls += 1
        self._last_seen = time.monotonic()
        deadline = self._last_seen + wait_s
        try:
            while True:
                if closed.is_set():
                    return CLOSED
                if self._queue:
                    request = self._queue.popleft()
                    self._serving.add(request.request_id)
                    return request
                new.clear()
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(new.wait(), left)
                except asyncio.TimeoutError:
                    return None
        finally:
            self._polls -= 1
            self._last_seen = time.monotonic()

    async def complete(self, request_id: int, awake: tuple[int, ...] | None, error: str | None) -> None:
        """Answer resize ``request_id``: the awake DP ranks, or the hook's error text."""
        self._serving.discard(request_id)
        self._last_seen = time.monotonic()
        future = self._waiting.get(request_id)
        if future is None or future.done():
            return  # the scheduler gave up on it (timeout) or the coordinator closed
        if error is not None:
            future.set_exception(ResizeFailedError(f"rlix_resize_infer of {self._pipeline_id!r} raised: {error}"))
        else:
            future.set_result(tuple(awake) if awake is not None else None)

    # -- lifecycle and reading --------------------------------------------------------------------

    async def close(self, reason: str = "closed") -> None:
        """Fail pending resizes, release pollers and the watch. Idempotent."""
        _, closed = self._events()
        if self._closed_reason is None:
            self._closed_reason = reason
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ResizeFailedError(f"coordinator of {self._pipeline_id!r} closed ({reason})"))
        closed.set()

    async def ping(self) -> str:
        return self._pipeline_id

    async def quiet_for(self) -> float:
        """Seconds since the pipeline process last polled for resizes (0 while a poll or a resize
        is in progress): its heartbeat."""
        if self._polls or self._serving:
            return 0.0
        return time.monotonic() - self._last_seen

    async def describe(self) -> dict[str, Any]:
        return {
            "pipeline_id": self._pipeline_id,
            "namespace": self._namespace,
            "node_id": ray.get_runtime_context().get_node_id(),
            "created_at": self._created,
            "resizes": self._resizes,
            "queued": len(self._queue),
            "serving": sorted(self._serving),
            "polling": self._polls,
            "closed": self._closed_reason,
        }


#: The actor class; create it with ``CoordinatorActor.options(**COORDINATOR_OPTIONS, name=...,
#: namespace=...)`` (see :func:`rlix_plugin.ray.resize_server.start_coordinator`).
CoordinatorActor = ray.remote(Coordinator)

__all__ = [
    "CLOSED",
    "COORDINATOR_OPTIONS",
    "Coordinator",
    "CoordinatorActor",
    "ResizeFailedError",
    "ResizeRequest",
    "SERVER_GRACE_S",
]
