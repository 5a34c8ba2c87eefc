"""The ``local`` backend: an embedded scheduler in this process.

:class:`LocalScheduler` runs a :class:`~rlix_plugin.scheduler.service.SchedulerService` on an
event loop in a daemon thread and gives it a synchronous, timeout-bounded face.
:class:`LocalBackend` is the plugin that answers the demand-side hooks with it; every pipeline
registered through a plugin manager has its resizes sent back through that manager's
``rlix_resize_infer`` (run in a worker thread, so pipelines resize concurrently and the
scheduling loop is never blocked by a framework).

Pool size: ``backend_options={"num_gpus": 8, "gpus_per_node": 8}``, or the environment
(``RLIX_LOCAL_GPUS``, ``RLIX_LOCAL_GPUS_PER_NODE``), or pass ``scheduler=`` to share one
scheduler among several plugin managers. Managers built without options share one process-wide
scheduler, so pipelines of one process see each other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ClusterSpec,
    Grant,
    InvalidRequestError,
    RlixError,
    SchedulerTimeoutError,
    SchedulerUnavailableError,
    SwitchCosts,
    hookimpl,
)
from rlix_plugin.progress import BEGIN, END, CoalescedProgressHooks, ProgressCoalescer, ProgressReport
from rlix_plugin.scheduler.service import SchedulerService
from rlix_plugin.scheduler.topology import PoolTopology

if TYPE_CHECKING:
    from rlix_plugin.manager import RlixPluginManager

T = TypeVar("T")
log = logging.getLogger("rlix_plugin.local")

#: Extra seconds a caller waits beyond the scheduler-side timeout before giving up on the loop
#: thread itself (which then means the loop is wedged, not that GPUs are busy).
_LOOP_GRACE_S = 5.0


class LocalScheduler:
    """A scheduler on its own event-loop thread, callable from any thread."""

    def __init__(self, num_gpus: int, gpus_per_node: int = 8, **service_options: Any) -> None:
        self.service = SchedulerService(PoolTopology(num_gpus, gpus_per_node), **service_options)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="rlix-local-scheduler", daemon=True)
        self._thread.start()
        self.call(self.service.start(), timeout_s=10.0)
        self._closed = False

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
        self.loop.call_soon_threadsafe(fn, *args)

    def read(self, fn: Callable[[], T], timeout_s: float = 10.0) -> T:
        """Evaluate ``fn()`` on the loop (a consistent read of the state)."""

        async def run() -> T:
            return fn()

        return self.call(run(), timeout_s)

    def snapshot(self) -> dict[str, Any]:
        return self.read(self.service.snapshot)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.call(self.service.stop(), timeout_s=10.0)
        finally:
            self._closed = True
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10.0)


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
        return _default


class LocalBackend(CoalescedProgressHooks):
    """Answers the demand-side hooks with a :class:`LocalScheduler`."""

    def __init__(self, scheduler: LocalScheduler, *, progress_interval_s: float = 0.05) -> None:
        self.scheduler = scheduler
        self._pm: RlixPluginManager | None = None
        self._progress = ProgressCoalescer(self._deliver, min_interval_s=progress_interval_s)
        self._resize_pool = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="rlix-resize")

    def bind(self, pm: RlixPluginManager) -> None:
        """Called by the manager factory: resizes of pipelines registered here go through ``pm``."""
        self._pm = pm

    # -- lifecycle --------------------------------------------------------------------------------

    @hookimpl
    def rlix_register_pipeline(
        self, pipeline_id: str, clusters: Mapping[str, ClusterSpec], switch_costs: SwitchCosts | None
    ) -> None:
        self.scheduler.call(
            self.scheduler.service.register_pipeline(
                pipeline_id, clusters, self._resizer(), switch_costs=switch_costs
            ),
            timeout_s=10.0,
        )

    @hookimpl
    def rlix_unregister_pipeline(self, pipeline_id: str, reason: str) -> None:
        self._progress.forget(pipeline_id)
        self.scheduler.call(self.scheduler.service.unregister_pipeline(pipeline_id, reason), timeout_s=10.0)

    # -- demand -----------------------------------------------------------------------------------

    @hookimpl
    def rlix_signal_demand(self, pipeline_id: str, rollout_id: int, step_target: int, timeout_s: float) -> Grant:
        self.settle_progress()
        return self.scheduler.call(
            self.scheduler.service.signal_demand(pipeline_id, rollout_id, step_target, timeout_s), timeout_s
        )

    @hookimpl
    def rlix_request_gpus(
        self, pipeline_id: str, cluster: str, priority: int, step_target: int | None, timeout_s: float
    ) -> Grant:
        if cluster == ACTOR_INFER:
            self.settle_progress()
        return self.scheduler.call(
            self.scheduler.service.request_gpus(pipeline_id, cluster, priority, step_target, timeout_s), timeout_s
        )

    @hookimpl
    def rlix_release(self, pipeline_id: str, cluster: str) -> None:
        if cluster == ACTOR_INFER:
            self._progress.forget(pipeline_id)
        timeout_s = self.scheduler.service.resize_timeout_s + 10.0
        self.scheduler.call(self.scheduler.service.release(pipeline_id, cluster, timeout_s), timeout_s)

    @hookimpl
    def rlix_report_preempt(self, pipeline_id: str, dp_rank: int, retracted: int) -> None:
        self.scheduler.call_soon(self.scheduler.service.report_preempt, pipeline_id, dp_rank, retracted)

    def close(self) -> None:
        """Deliver what progress is left and stop this backend's threads (idempotent). The
        scheduler is not closed: other managers may share it."""
        self._progress.close()
        self._resize_pool.shutdown(wait=False)

    def flush_progress(self, timeout_s: float = 5.0) -> bool:
        """Wait until every progress call so far reached the scheduler (tests, shutdown)."""
        if not self._progress.flush(timeout_s):
            return False
        self.scheduler.read(lambda: None, timeout_s)  # deliveries queued before this have run
        return True

    # -- plumbing ---------------------------------------------------------------------------------

    def _deliver(self, report: ProgressReport) -> None:
        service = self.scheduler.service
        if report.kind == END:
            self.scheduler.call_soon(_quietly, service.clear_progress, report.pipeline_id, report.mode, report.adapter_id)
        else:
            self.scheduler.call_soon(
                _quietly, service.report_progress, report.pipeline_id, report.mode, report.adapter_id,
                report.step_target, report.completed, report.target_weight_version, report.kind == BEGIN,
            )

    def _resizer(self) -> Callable[[str, tuple[int, ...], tuple[int, ...]], Coroutine[Any, Any, Any]]:
        pm = self._pm
        pool = self._resize_pool

        async def resize(pipeline_id: str, remove: tuple[int, ...], add: tuple[int, ...]) -> Any:
            if pm is None:
                raise RuntimeError("the local backend is not bound to a plugin manager")
            call = pm.hook.rlix_resize_infer
            return await asyncio.get_running_loop().run_in_executor(
                pool, lambda: call(pipeline_id=pipeline_id, dp_ranks_to_remove=remove, dp_ranks_to_add=add)
            )

        return resize


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Apply a progress report on the loop; a bad report is logged, never raised into the loop."""
    try:
        fn(*args)
    except Exception as exc:
        log.warning("progress signal lost: %r", exc)


def make_backend(
    scheduler: LocalScheduler | None = None,
    num_gpus: int | None = None,
    gpus_per_node: int = 8,
    progress_interval_s: float = 0.05,
    **service_options: Any,
) -> LocalBackend:
    """Build the plugin: on ``scheduler``, on a new one of ``num_gpus``, or on the process-wide one."""
    if scheduler is None:
        scheduler = LocalScheduler(num_gpus, gpus_per_node, **service_options) if num_gpus else default_scheduler()
    return LocalBackend(scheduler, progress_interval_s=progress_interval_s)


__all__ = ["LocalBackend", "LocalScheduler", "default_scheduler", "make_backend"]
