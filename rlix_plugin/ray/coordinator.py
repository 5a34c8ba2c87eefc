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

Scheduler restarts: the coordinator outlives the scheduler (the pipeline's process owns it). A
restarted scheduler finds it again by name and calls :meth:`reconcile` with its new **epoch**;
the coordinator queues a :class:`ReconcileRequest` for the pipeline process, which answers the
scheduler directly (it reattaches with its lease, its resize token and its own report). From
then on resizes of older epochs are refused, and queued ones are dropped unrun: an engine is
never moved by a scheduler that is no longer the one in charge. The previous incarnation's
:meth:`watch` call is ended when the new one's arrives, so restarts leave no call behind.
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

from .kv_store import RayKVStore

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
    #: Epoch of the scheduler that asked.
    epoch: int = 0


@dataclass(frozen=True)
class ReconcileRequest:
    """A restarted scheduler (``epoch``) asks the pipeline process to reattach and report."""

    request_id: int
    pipeline_id: str
    epoch: int


#: Answer of a :meth:`Coordinator.watch` call that a newer scheduler's watch replaced.
SUPERSEDED = "superseded"


class ResizeFailedError(RuntimeError):
    """The pipeline's ``rlix_resize_infer`` raised; the message carries its traceback."""


class Coordinator:
    """Mailbox between the scheduler's resize calls and the pipeline process's hook."""

    def __init__(
        self, pipeline_id: str, namespace: str, resize_token: str, server_grace_s: float = SERVER_GRACE_S
    ) -> None:
        self._pipeline_id = pipeline_id
        self._resize_token = resize_token
        self._namespace = namespace
        self._grace = server_grace_s
        self._ids = itertools.count(1)
        self._queue: deque[ResizeRequest | ReconcileRequest] = deque()
        #: Newest scheduler epoch seen (resizes of older ones are refused).
        self._epoch = 0
        self._watches: dict[int, asyncio.Future[str]] = {}
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
        self,
        resize_token: str,
        pipeline_id: str,
        dp_ranks_to_remove: tuple[int, ...],
        dp_ranks_to_add: tuple[int, ...],
        epoch: int = 0,
    ) -> tuple[int, ...] | None:
        """Have the pipeline process run ``rlix_resize_infer`` and return its answer. Only the
        scheduler may ask: it presents the token the pipeline process gave it (at registration,
        or when it reattached to a restarted scheduler), and its ``epoch``.

        :raises NotPipelineOwnerError: a wrong token (nothing is resized).
        :raises ResizeFailedError: the hook raised, nobody serves this pipeline's resizes, the
            coordinator was closed, or a newer scheduler took over. The caller's timeout bounds
            the wait.
        """
        if not isinstance(resize_token, str) or not hmac.compare_digest(resize_token, self._resize_token):
            raise NotPipelineOwnerError(
                f"coordinator of {self._pipeline_id!r}: resizes are taken only from the scheduler it registered with"
            )
        if pipeline_id != self._pipeline_id:
            raise InvalidRequestError(f"coordinator of {self._pipeline_id!r} got a resize for {pipeline_id!r}")
        if self._closed_reason is not None:
            raise ResizeFailedError(f"coordinator of {pipeline_id!r} is closed ({self._closed_reason})")
        if epoch < self._epoch:
            raise ResizeFailedError(f"resize from scheduler epoch {epoch}, superseded by epoch {self._epoch}")
        self._epoch = epoch
        idle = time.monotonic() - self._last_seen
        if not self._polls and not self._serving and idle > self._grace:
            raise ResizeFailedError(
                f"no process serves resizes of pipeline {pipeline_id!r}: its last poll ended {idle:.1f}s ago "
                "(the pipeline process is stuck or its resize thread died)"
            )
        new, _ = self._events()
        request = ResizeRequest(next(self._ids), pipeline_id, tuple(dp_ranks_to_remove), tuple(dp_ranks_to_add), epoch)
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

    async def watch(self, epoch: int = 0) -> str:
        """Return only when the coordinator is closed (``CLOSED``), or when the watch of a newer
        scheduler epoch replaced this one (``SUPERSEDED``): the scheduler's death watch. While the
        coordinator lives this call stays pending; when it dies, the call fails at once."""
        _, closed = self._events()
        if closed.is_set():
            return CLOSED
        for older in [e for e in self._watches if e < epoch]:
            replaced = self._watches.pop(older)
            if not replaced.done():
                replaced.set_result(SUPERSEDED)
        future = self._watches.get(epoch)
        if future is None or future.done():
            future = self._watches[epoch] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(future)

    async def reconcile(self, epoch: int) -> bool:
        """A restarted scheduler of ``epoch`` takes over: refuse resizes of older epochs from now
        on, drop the ones still queued (never run), and queue a :class:`ReconcileRequest` for the
        pipeline process, which reattaches to the scheduler with its report. False (nothing
        done) for an epoch older than one already seen. Anyone may call it: what it triggers is
        a call from the pipeline process to the scheduler found by name, with the lease -- and an
        epoch no scheduler claimed (which would make the real one's resizes look stale) is
        refused: it is checked against the epochs claimed in the GCS store."""
        if self._closed_reason is not None or not isinstance(epoch, int) or epoch < self._epoch:
            return False
        if epoch > await asyncio.to_thread(RayKVStore().newest_epoch):
            return False
        self._epoch = epoch
        new, _ = self._events()
        for request in [r for r in self._queue if isinstance(r, ResizeRequest) and r.epoch < epoch]:
            self._queue.remove(request)
            future = self._waiting.pop(request.request_id, None)
            if future is not None and not future.done():
                future.set_exception(ResizeFailedError(f"superseded by scheduler epoch {epoch} before it ran"))
        self._queue.append(ReconcileRequest(next(self._ids), self._pipeline_id, epoch))
        new.set()
        return True

    # -- called by the pipeline process -----------------------------------------------------------

    async def next_request(self, wait_s: float) -> ResizeRequest | ReconcileRequest | str | None:
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
                    if isinstance(request, ResizeRequest):
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
        for watch in self._watches.values():
            if not watch.done():
                watch.set_result(CLOSED)
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
            "epoch": self._epoch,
            "watches": sorted(self._watches),
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
    "ReconcileRequest",
    "ResizeFailedError",
    "ResizeRequest",
    "SERVER_GRACE_S",
    "SUPERSEDED",
]
