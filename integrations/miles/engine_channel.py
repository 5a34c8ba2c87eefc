"""Engine calls that never wait behind ``generate``: a thread in the RolloutManager's process.

rlix creates miles' ``RolloutManager`` actor without ``max_concurrency``, so the actor runs one
call at a time, and a resize sent as an actor call while a rollout runs would wait for that rollout
to end: rollouts often run longer than the engine timeout, and the scheduler would fence the
pipeline. The scheduler's preemptions have to reach the engines *during* a rollout.

So ``install`` starts a daemon thread inside the manager's process (one ``__ray_call__``, before
any rollout) that takes the integration's engine calls from a small mailbox actor and runs them on
the manager object directly, next to whatever the actor is running. The calls are the ones a resize
needs (:data:`CHANNEL_METHODS`), one at a time, in order. Lifetime: the mailbox is owned by the
process that called ``install`` and dies with it (``uninstall`` kills it); the thread ends when the
mailbox is gone, or when a later install starts another thread on the same manager.

Concurrency this creates: engine methods run concurrently with ``generate`` and with other
manager calls, as they would on an actor created with ``max_concurrency > 1``. What makes that
sound in miles: the rollout function reaches the engines through the router, not the engine table;
``shrink_engines`` closes an engine's routing and aborts and drains its in-flight requests before
releasing it; the fully-async rollout function returns groups cut short by an abort to its data
source and generates them again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

#: Manager methods the channel runs (nothing else: it is not a general RPC).
CHANNEL_METHODS = frozenset(
    {
        "get_engine_count",
        "get_engine_states",
        "shrink_engines",
        "expand_engines",
        "set_weight_version",
        "activate_routing",
    }
)
#: Not a manager method: the channel's one other call, which tells the hooks the manager holds
#: which rollout comes next (:func:`.hooks.set_rollout_in`), during a rollout too.
SET_ROLLOUT = "rlix_set_rollout"
#: Seconds one long poll of the manager's thread waits for a call. Idle cost: one small call per
#: interval per pipeline.
POLL_S = 2.0
# id(manager) -> stop event of the thread serving it, in the manager's process: a new install's
# thread stops the one an earlier install left.
_serving: dict[int, threading.Event] = {}
_serving_lock = threading.Lock()


class EngineMailbox:
    """Mailbox between the pipeline's engine calls and the thread in the manager's process (an
    async Ray actor: many calls may wait on it at once)."""

    def __init__(self, pipeline_id: str) -> None:
        self.pipeline_id = pipeline_id
        self._ids = itertools.count(1)
        self._queue: asyncio.Queue[tuple[int, str, tuple, dict]] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}

    def _calls(self) -> asyncio.Queue[tuple[int, str, tuple, dict]]:
        if self._queue is None:  # made on the actor's event loop
            self._queue = asyncio.Queue()
        return self._queue

    async def call(self, name: str, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """Queue one call and wait for the thread's answer: ``(True, result)`` or ``(False, error)``."""
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        await self._calls().put((call_id, name, args, kwargs))
        try:
            return await future
        finally:
            # Answered, or abandoned by the caller's timeout: the thread skips a call nobody awaits.
            self._pending.pop(call_id, None)

    async def next_call(self, wait_s: float) -> tuple[int, str, tuple, dict] | None:
        """The next call still awaited, or ``None`` after ``wait_s`` without one."""
        queue = self._calls()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                request = await asyncio.wait_for(queue.get(), left)
            except asyncio.TimeoutError:
                return None
            if request[0] in self._pending:
                return request

    async def answer(self, call_id: int, ok: bool, value: Any) -> None:
        future = self._pending.get(call_id)
        if future is not None and not future.done():
            future.set_result((ok, value))


def serve_engine_calls(manager: Any, mailbox: Any, pipeline_id: str) -> dict[str, Any]:
    """Runs in the manager's process (``__ray_call__``): start the thread that serves ``mailbox``
    on ``manager``; stop the thread an earlier install left on it. Returns where it runs."""
    stop = threading.Event()
    with _serving_lock:
        previous = _serving.get(id(manager))
        _serving[id(manager)] = stop
    if previous is not None:
        previous.set()
    thread = threading.Thread(
        target=_serve, args=(manager, mailbox, stop, pipeline_id), name=f"rlix-engine-calls-{pipeline_id}", daemon=True
    )
    thread.start()
    return {"process_id": os.getpid(), "thread": thread.name}


def _serve(manager: Any, mailbox: Any, stop: threading.Event, pipeline_id: str) -> None:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    while not stop.is_set():
        try:
            request = ray.get(mailbox.next_call.remote(POLL_S), timeout=POLL_S + 30.0)
        except GetTimeoutError:
            continue
        except (RayActorError, SystemExit):
            return  # the pipeline process (the mailbox's owner) is gone, or Ray shuts down here
        except Exception:
            log.exception("rlix: the engine channel of pipeline %r failed to poll; retrying", pipeline_id)
            stop.wait(1.0)
            continue
        if request is None:
            continue
        call_id, name, args, kwargs = request
        try:
            if name == SET_ROLLOUT:
                from .hooks import set_rollout_in

                set_rollout_in(manager, *args, **kwargs)
                ok, value = True, None
            elif name not in CHANNEL_METHODS:
                raise ValueError(f"{name!r} is not an engine call ({sorted(CHANNEL_METHODS)})")
            else:
                ok, value = True, getattr(manager, name)(*args, **kwargs)
        except Exception as exc:
            ok, value = False, exc
        try:
            mailbox.answer.remote(call_id, ok, value)
        except Exception as exc:  # an answer that does not pickle: send its text instead
            mailbox.answer.remote(call_id, False, RuntimeError(f"{type(value).__name__}: {value} ({exc!r})"))


class EngineChannel:
    """The pipeline side: the manager's engine methods, called through its thread.

    :param manager: :class:`~.rollout_manager.ManagerProxy` of a Ray actor.
    """

    def __init__(self, manager: Any, mailbox: Any, where: dict[str, Any]) -> None:
        self.manager = manager
        self.mailbox = mailbox
        self.where = where

    @classmethod
    def start(cls, manager: Any, timeout_s: float) -> EngineChannel:
        """Create the mailbox here and start the thread in the manager's process (an actor call:
        it waits for whatever the actor is running, with ``timeout_s``)."""
        import ray

        mailbox: Any = ray.remote(EngineMailbox).options(num_cpus=0, max_restarts=0).remote(manager.pipeline_id)
        try:
            where = manager.run_inside(serve_engine_calls, mailbox, manager.pipeline_id, timeout_s=timeout_s)
        except BaseException:
            ray.kill(mailbox, no_restart=True)
            raise
        return cls(manager, mailbox, where)

    def call(self, name: str, *args: Any, timeout_s: float, **kwargs: Any) -> Any:
        """``manager.name(*args, **kwargs)`` in the manager's process; its exception re-raised here.

        :raises TimeoutError: no answer within ``timeout_s`` (the call was withdrawn if not started).
        """
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        ref = self.mailbox.call.remote(name, tuple(args), dict(kwargs))
        try:
            ok, value = ray.get(ref, timeout=timeout_s)
        except GetTimeoutError:
            try:
                ray.cancel(ref)  # withdrawn unless the thread already took it
            except Exception:
                pass
            raise TimeoutError(
                f"pipeline {self.manager.pipeline_id!r}: RolloutManager.{name} did not answer within {timeout_s:.0f}s "
                f"on its engine thread ({self.where.get('thread')} in process {self.where.get('process_id')}): the engine "
                "operation itself is slow or stuck"
            ) from None
        except RayActorError as exc:
            raise RuntimeError(
                f"pipeline {self.manager.pipeline_id!r}: the engine channel to the RolloutManager is gone ({exc})"
            ) from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Kill the mailbox, which ends the thread at its next poll (never waits: this runs on
        shutdown paths)."""
        import ray

        try:
            ray.kill(self.mailbox, no_restart=True)
        except Exception as exc:  # already gone, or Ray shut down
            log.debug("rlix: closing the engine channel of %r: %r", self.manager.pipeline_id, exc)


__all__ = ["CHANNEL_METHODS", "SET_ROLLOUT", "EngineChannel", "EngineMailbox", "serve_engine_calls"]
