"""The ``local`` backend: an embedded scheduler in this process.

:class:`LocalScheduler` runs a :class:`~rlix_plugin.scheduler.service.SchedulerService` on an
event loop in a daemon thread and gives it a synchronous, timeout-bounded face. :class:`LocalPort`
is the transport (:class:`~.port.SchedulerPort`) the hook layer (:class:`~.hooks.SchedulerHooks`)
calls; every pipeline registered through a plugin manager has its resizes sent back through that
manager's ``rlix_resize_infer``, each in a thread of its own, so pipelines resize concurrently and
the scheduling loop is never blocked by a framework.

Pool size: ``backend_options={"num_gpus": 8, "gpus_per_node": 8}``, or the environment
(``RLIX_LOCAL_GPUS``, ``RLIX_LOCAL_GPUS_PER_NODE``), or pass ``scheduler=`` to share one
scheduler among several plugin managers. Managers built without options share one process-wide
scheduler, so pipelines of one process see each other. A backend built on a scheduler of its own
(``num_gpus``) closes it when the backend is closed; the process-wide one is closed at exit.

Persistence is opt-in: ``state_path=`` (a file) keeps every committed change in SQLite (WAL mode,
:class:`~rlix_plugin.scheduler.store.SqliteStore`), and a scheduler started on a file that holds
a record restores it: its pipelines come back registered, holding what they held, and must
reattach (:meth:`LocalPort.reattach`) within ``reconcile_timeout_s`` or be fenced and, after the
grace, reclaimed. Without the option nothing is written and a new scheduler starts empty.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from rlix_plugin.hookspecs import (
    Grant,
    InvalidRequestError,
    Priority,
    RlixError,
    SchedulerTimeoutError,
    SchedulerUnavailableError,
)
from rlix_plugin.metrics.catalog import REQUEST_GPUS, SIGNAL_DEMAND
from rlix_plugin.progress import ProgressReport
from rlix_plugin.scheduler.journal import Journal
from rlix_plugin.scheduler.rehydrate import PipelineReport
from rlix_plugin.scheduler.service import SchedulerService
from rlix_plugin.scheduler.state import SchedulerState
from rlix_plugin.scheduler.store import SqliteStore
from rlix_plugin.scheduler.topology import PoolTopology

from .hooks import SchedulerHooks
from .port import Registration, ResizeHook

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Extra seconds a caller waits beyond the scheduler-side timeout before giving up on the loop
#: thread itself (which then means the loop is wedged, not that GPUs are busy).
_LOOP_GRACE_S = 5.0


class LocalScheduler:
    """A scheduler on its own event-loop thread, callable from any thread."""

    def __init__(
        self,
        num_gpus: int,
        gpus_per_node: int = 8,
        *,
        state_path: str | os.PathLike[str] | None = None,
        reconcile_timeout_s: float = 30.0,
        **service_options: Any,
    ) -> None:
        self.store = SqliteStore(state_path) if state_path is not None else None
        self.service = SchedulerService(
            PoolTopology(num_gpus, gpus_per_node),
            store=self.store,
            epoch=self.store.claim() if self.store is not None else None,
            **service_options,
        )
        #: Pipelines restored from ``state_path``, which must reattach.
        self.restored: list[str] = []
        stored = self.store.load() if self.store is not None else None
        if stored is not None:
            self.restored = self.service.restore(stored.payload)
        #: The decision log (:mod:`rlix_plugin.scheduler.journal`); read it through :meth:`decisions`.
        self.journal = Journal(self.service.state)
        self.service.add_observer(self.journal)
        from rlix_plugin.metrics import serve_local

        #: Its metrics, when ``RLIX_METRICS_PORT`` asks for them (:mod:`rlix_plugin.metrics`).
        self.metrics = serve_local(self)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="rlix-local-scheduler", daemon=True)
        self._thread.start()
        self.call(self.service.start(), timeout_s=10.0)
        self._closed = False
        if self.restored:
            log.warning(
                "local scheduler restored %s from %s; they must reattach within %.0fs",
                self.restored,
                self.store.where if self.store else "?",
                reconcile_timeout_s,
            )
            self.loop.call_soon_threadsafe(
                self.loop.call_later,
                reconcile_timeout_s,
                self.service.expire_unreconciled,
                f"did not reattach within {reconcile_timeout_s:g}s of a scheduler restart",
            )

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coro`` on the scheduler loop and wait for it (``timeout_s`` plus a grace)."""
        if getattr(self, "_closed", False):
            coro.close()
            raise SchedulerUnavailableError("the local scheduler is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s + _LOOP_GRACE_S)
        except RlixError:
            # The scheduler's own answer (a SchedulerTimeoutError with its diagnostic is also a
            # TimeoutError, which the clause below would swallow).
            raise
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise SchedulerTimeoutError(
                f"the local scheduler loop did not answer within {timeout_s + _LOOP_GRACE_S:.1f}s"
            ) from None

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the scheduler loop without waiting (progress)."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # its loop was closed
            raise SchedulerUnavailableError("the local scheduler is closed") from None

    def read(self, fn: Callable[[], T], timeout_s: float = 10.0) -> T:
        """Evaluate ``fn()`` on the loop (a consistent read of the state)."""

        async def run() -> T:
            return fn()

        return self.call(run(), timeout_s)

    def snapshot(self) -> dict[str, Any]:
        return self.read(self.service.snapshot)

    def waited(self, op: str, grant: Grant, priority: int) -> None:
        """Count how long a ``signal_demand`` or ``request_gpus`` call (``op``) waited for ``grant``."""
        if self.metrics is not None and not self._closed:
            self.call_soon(self.metrics.recorder.waited, op, grant.pipeline_id, priority, grant.waited_s)

    def decisions(self, since: int = 0, pipeline: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Decisions numbered above ``since`` (of ``pipeline``), oldest first, as plain data."""
        log = self.journal.log
        return self.read(lambda: [d.to_json() for d in log.since(since, pipeline, limit)])

    def diagnostic(self, headline: str = "", timeout_s: float = 5.0) -> str:
        """The scheduler's view (or, if its loop does not answer, a line that says so)."""
        try:
            return self.read(lambda: self.service.diagnostic(headline), timeout_s=timeout_s)
        except Exception as exc:  # the loop itself is wedged: say so instead of hanging
            return f"{headline}\n(scheduler did not answer: {exc!r})"

    def add_listener(self, listener: Callable[[str, SchedulerState], None]) -> None:
        """``listener(event, state)`` after every change, on the scheduler's loop thread (read the
        state there, never change it). Registered on the loop, so no change slips in between."""
        service = self.service
        self.read(lambda: service.add_listener(lambda event, svc: listener(event, svc.state)))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.call(self.service.stop(), timeout_s=10.0)
        finally:
            if self.metrics is not None:
                from rlix_plugin.metrics.local import detach

                detach(self.metrics)
            self._closed = True
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10.0)
            if not self._thread.is_alive():
                # The loop's worker threads (the state file's writes run there) end with it.
                try:
                    self.loop.run_until_complete(asyncio.wait_for(self.loop.shutdown_default_executor(), 10.0))
                except TimeoutError:
                    log.warning("a write of the local scheduler's state did not finish within 10s of close")
                self.loop.close()
            if self.store is not None:
                self.store.close()


_default_lock = threading.Lock()
_default: LocalScheduler | None = None


def default_scheduler() -> LocalScheduler:
    """The process-wide scheduler, created on first use from ``RLIX_LOCAL_GPUS`` (default 8) and
    ``RLIX_LOCAL_GPUS_PER_NODE`` (default 8)."""
    global _default
    with _default_lock:
        if _default is None:
            try:
                gpus = int(os.environ.get("RLIX_LOCAL_GPUS", "8"))
                per_node = int(os.environ.get("RLIX_LOCAL_GPUS_PER_NODE", "8"))
            except ValueError as exc:
                raise InvalidRequestError(f"RLIX_LOCAL_GPUS / RLIX_LOCAL_GPUS_PER_NODE must be ints: {exc}") from None
            _default = LocalScheduler(gpus, per_node)
            # Stop its loop before the interpreter tears down: nothing of it outlives the program.
            atexit.register(_default.close)
        return _default


class LocalPort:
    """The :class:`~.port.SchedulerPort` of a :class:`LocalScheduler` in this process."""

    name = "local"

    def __init__(self, scheduler: LocalScheduler, *, owns_scheduler: bool = False) -> None:
        self.scheduler = scheduler
        #: Whether :meth:`close` closes the scheduler too (it was made for this port alone).
        self.owns_scheduler = owns_scheduler

    def register(self, registration: Registration, resize: ResizeHook) -> str:
        service = self.scheduler.service
        return self.scheduler.call(
            service.register_pipeline(
                registration.pipeline_id,
                registration.clusters,
                self._resizer(resize),
                switch_costs=registration.switch_costs,
                limits=registration.limits,
            ),
            timeout_s=10.0,
        )

    def unregister(self, pipeline_id: str, lease: str, reason: str) -> None:
        self.scheduler.call(self.scheduler.service.unregister_pipeline(pipeline_id, lease, reason), timeout_s=10.0)

    def reattach(self, pipeline_id: str, lease: str, resize: ResizeHook, report: PipelineReport) -> dict[str, Any]:
        """Reattach a pipeline restored from the state file: its resizes run through ``resize``
        from now on, and the scheduler reconciles its state with ``report``."""
        return self.scheduler.call(
            self.scheduler.service.reattach(pipeline_id, lease, self._resizer(resize), report), timeout_s=10.0
        )

    def _resizer(self, resize: ResizeHook) -> Any:
        async def resizer(pipeline_id: str, remove: tuple[int, ...], add: tuple[int, ...]) -> Any:
            # Each resize on its own thread, as the Ray backend's resize server runs them: a resize
            # may take seconds, several of one pipeline may be in flight at once (moves on
            # disjoint ranks), and no idle worker outlives them.
            loop = asyncio.get_running_loop()
            done: asyncio.Future[Any] = loop.create_future()

            def run() -> None:
                result, error = None, None
                try:
                    result = resize(pipeline_id, remove, add)
                except BaseException as exc:
                    error = exc
                try:
                    loop.call_soon_threadsafe(_settle, done, result, error)
                except RuntimeError:  # the scheduler closed its loop meanwhile: no one waits
                    log.debug("resize of %s finished after its scheduler closed", pipeline_id)

            threading.Thread(target=run, name=f"rlix-resize-{pipeline_id}", daemon=True).start()
            return await done

        return resizer

    def signal_demand(self, pipeline_id: str, lease: str, rollout_id: int, step_target: int, timeout_s: float) -> Grant:
        grant = self.scheduler.call(
            self.scheduler.service.signal_demand(pipeline_id, lease, rollout_id, step_target, timeout_s), timeout_s
        )
        self.scheduler.waited(SIGNAL_DEMAND, grant, Priority.GENERATION)
        return grant

    def request(
        self, pipeline_id: str, lease: str, cluster: str, priority: int, step_target: int | None, timeout_s: float
    ) -> Grant:
        grant = self.scheduler.call(
            self.scheduler.service.request_gpus(pipeline_id, lease, cluster, priority, step_target, timeout_s),
            timeout_s,
        )
        self.scheduler.waited(REQUEST_GPUS, grant, priority)
        return grant

    def release(self, pipeline_id: str, lease: str, cluster: str) -> None:
        timeout_s = self.scheduler.service.resize_timeout_s + 10.0
        self.scheduler.call(self.scheduler.service.release(pipeline_id, lease, cluster, timeout_s), timeout_s)

    def report_preempt(self, pipeline_id: str, lease: str, dp_rank: int, retracted: int) -> None:
        self.scheduler.call_soon(
            _quietly, self.scheduler.service.report_preempt, pipeline_id, lease, dp_rank, retracted
        )

    def send_progress(self, lease: str, report: ProgressReport) -> None:
        self.scheduler.call_soon(_quietly, self.scheduler.service.apply_progress, lease, report)

    def flush(self, timeout_s: float) -> bool:
        try:
            self.scheduler.read(lambda: None, timeout_s)  # reports queued before this have run
        except RlixError:
            return False
        return True

    def is_registered(self, pipeline_id: str) -> bool:
        state = self.scheduler.service.state
        return bool(self.scheduler.read(lambda: pipeline_id in state.pipelines))

    def diagnostic(self, headline: str) -> str:
        return self.scheduler.diagnostic(headline)

    def close(self) -> None:
        if self.owns_scheduler:
            self.scheduler.close()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Complete ``future`` on its loop, unless its waiter gave up on it (a timed-out resize)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Apply a progress report on the loop; a bad report is logged, never raised into the loop."""
    try:
        fn(*args)
    except Exception as exc:
        log.warning("progress signal lost: %r", exc)


def make_backend(
    resize: ResizeHook,
    scheduler: LocalScheduler | None = None,
    num_gpus: int | None = None,
    gpus_per_node: int = 8,
    progress_interval_s: float = 0.05,
    leases: Mapping[str, str] | None = None,
    **service_options: Any,
) -> SchedulerHooks:
    """Build the plugin: on ``scheduler``, on a new one of ``num_gpus``, or on the process-wide
    one. ``resize`` runs the owning manager's ``rlix_resize_infer``; ``leases`` are pipelines'
    leases handed over by the process that registered them."""
    if scheduler is None and num_gpus is None and service_options.get("state_path") is not None:
        raise InvalidRequestError(
            f"state_path={service_options['state_path']!r} needs num_gpus (and gpus_per_node): the process-wide "
            "scheduler keeps no state file"
        )
    owns_scheduler = scheduler is None and bool(num_gpus)
    if scheduler is None:
        scheduler = LocalScheduler(num_gpus, gpus_per_node, **service_options) if num_gpus else default_scheduler()
    port = LocalPort(scheduler, owns_scheduler=owns_scheduler)
    return SchedulerHooks(port, resize, progress_interval_s=progress_interval_s, leases=leases)


__all__ = ["LocalPort", "LocalScheduler", "default_scheduler", "make_backend"]
