"""Pipeline side of the supply path: start a pipeline's coordinator and serve its resizes.

:func:`start_coordinator` creates the coordinator actor in the pipeline's namespace, owned by the
calling process (so it dies with it). :class:`ResizeServer` is a daemon thread in the pipeline's
process that long-polls the coordinator and runs ``rlix_resize_infer`` there, where the engines
are. One server per registered pipeline: a process may hold several pipelines. When a restarted
scheduler asks the pipeline to reconcile, the server hands the request to ``on_reconcile`` (on a
thread of its own), which reattaches the pipeline once the resizes it is running are over
(:meth:`ResizeServer.wait_idle`).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rlix_plugin.hookspecs import InvalidRequestError, SchedulerTimeoutError

from .coordinator import CLOSED, COORDINATOR_OPTIONS, CoordinatorActor, ReconcileRequest, ResizeRequest
from .names import COORDINATOR_NAME, pipeline_namespace

log = logging.getLogger(__name__)

#: ``run(pipeline_id, dp_ranks_to_remove, dp_ranks_to_add) -> awake ranks | None``
ResizeHook = Callable[[str, tuple[int, ...], tuple[int, ...]], "tuple[int, ...] | None"]
#: ``on_reconcile(request)``: reattach the pipeline to the restarted scheduler that asked.
ReconcileHook = Callable[[ReconcileRequest], None]

#: Seconds one long poll waits for a resize. Idle cost: one small call per interval per pipeline.
POLL_S = 5.0
#: Longest wait for a new coordinator to come up (a fresh worker process on a loaded node).
START_TIMEOUT_S = 60.0


def _actor_or_none(name: str, namespace: str) -> Any:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def start_coordinator(pipeline_id: str, is_registered: Callable[[str], bool], resize_token: str) -> Any:
    """Create the coordinator of ``pipeline_id`` and wait until it answers.

    A coordinator left under that name by an earlier run (this process re-registering, or a
    previous owner that is still winding down) is replaced when the scheduler no longer knows the
    pipeline; while the scheduler still has it registered, registering again is refused.

    :param is_registered: asks the scheduler whether the pipeline is registered.
    :param resize_token: what the coordinator asks of every resize (only the scheduler gets it).
    :raises InvalidRequestError: the pipeline is registered and its coordinator alive.
    :raises SchedulerTimeoutError: the coordinator did not start in time.
    """
    namespace = pipeline_namespace(pipeline_id)
    # Next to its pipeline: a resize is two round trips between them.
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            handle: Any = CoordinatorActor.options(
                name=COORDINATOR_NAME, namespace=namespace, scheduling_strategy=here, **COORDINATOR_OPTIONS
            ).remote(pipeline_id, namespace, resize_token)
        except ValueError:  # the name is taken
            stale = _actor_or_none(COORDINATOR_NAME, namespace)
            if stale is None:
                continue  # it went away in the meantime
            if is_registered(pipeline_id):
                raise InvalidRequestError(
                    f"pipeline {pipeline_id!r} is already registered; its coordinator is alive in namespace "
                    f"{namespace!r} (unregister it first, or use another pipeline id)"
                ) from None
            log.warning("replacing a stale coordinator of pipeline %s left by an earlier run", pipeline_id)
            ray.kill(stale, no_restart=True)
            while _actor_or_none(COORDINATOR_NAME, namespace) is not None:
                if time.monotonic() > deadline:
                    raise SchedulerTimeoutError(f"stale coordinator of {pipeline_id!r} did not go away") from None
                time.sleep(0.05)  # the name is released asynchronously after the kill
            continue
        left = max(1.0, deadline - time.monotonic())
        try:
            ray.get(handle.ping.remote(), timeout=left)
        except GetTimeoutError:
            ray.kill(handle, no_restart=True)
            raise SchedulerTimeoutError(
                f"the coordinator of pipeline {pipeline_id!r} did not start within {START_TIMEOUT_S:.0f}s "
                "(is the node out of worker processes?)"
            ) from None
        return handle


class ResizeServer:
    """Runs the scheduler's resizes of one pipeline in this process (a daemon thread)."""

    def __init__(
        self,
        pipeline_id: str,
        coordinator: Any,
        run_hook: ResizeHook,
        poll_s: float = POLL_S,
        on_reconcile: ReconcileHook | None = None,
    ) -> None:
        self.pipeline_id = pipeline_id
        self.served = 0
        self._coordinator = coordinator
        self._run_hook = run_hook
        self._on_reconcile = on_reconcile
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._lock = threading.Condition()
        self._running = 0
        self._thread = threading.Thread(target=self._run, name=f"rlix-resize-{pipeline_id}", daemon=True)

    def start(self) -> ResizeServer:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no resize is running in this process (False after ``timeout_s``)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._running == 0, timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling. The caller closes or kills the coordinator, which ends the pending poll."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                request = ray.get(self._coordinator.next_request.remote(self._poll_s), timeout=self._poll_s + 30.0)
            except GetTimeoutError:
                continue  # a slow coordinator; its own grace tells the scheduler if this persists
            except RayActorError:
                if not self._stop.is_set():
                    log.error(
                        "the coordinator of pipeline %s is gone; resizes no longer reach this process", self.pipeline_id
                    )
                return
            except SystemExit:
                return  # ray.shutdown() in this process: Ray ends its calls this way
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("polling the coordinator of pipeline %s failed; retrying", self.pipeline_id)
                self._stop.wait(1.0)
                continue
            if request is None:
                continue
            if request == CLOSED:
                return
            if isinstance(request, ReconcileRequest):
                if self._on_reconcile is not None:
                    threading.Thread(
                        target=self._on_reconcile,
                        args=(request,),
                        daemon=True,
                        name=f"rlix-reattach-{self.pipeline_id}",
                    ).start()
                continue
            with self._lock:
                self._running += 1
            # Each resize in its own thread: the scheduler runs moves of one pipeline on disjoint
            # ranks concurrently, and a slow wake must not hold up a sleep another move needs.
            threading.Thread(
                target=self._serve,
                args=(request,),
                daemon=True,
                name=f"rlix-resize-{self.pipeline_id}-{request.request_id}",
            ).start()

    def _serve(self, request: ResizeRequest) -> None:
        awake: tuple[int, ...] | None = None
        error: str | None = None
        try:
            result = self._run_hook(request.pipeline_id, request.dp_ranks_to_remove, request.dp_ranks_to_add)
            awake = tuple(sorted(result)) if result is not None else None
        except Exception as exc:
            error = f"{exc!r}\n{traceback.format_exc()}"
            log.error("rlix_resize_infer of pipeline %s failed: %r", request.pipeline_id, exc)
        try:
            # Fire and forget: the scheduler is waiting on the coordinator, not on this call.
            self._coordinator.complete.remote(request.request_id, awake, error)
        except Exception:
            log.exception("could not answer resize %s of pipeline %s", request.request_id, request.pipeline_id)
        finally:
            with self._lock:
                self.served += 1
                self._running -= 1
                self._lock.notify_all()


__all__ = ["POLL_S", "ReconcileHook", "ResizeHook", "ResizeServer", "start_coordinator"]
