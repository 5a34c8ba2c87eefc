"""The ``ray`` backend: the hooks answered by the shared scheduler actor on a Ray cluster.

``get_plugin_manager("ray", backend_options={...})``; options are those of
:func:`rlix_plugin.ray.connect` (``address``, ``create_if_missing``, ``num_gpus``,
``gpus_per_node``, ``resize_timeout_s``, ``init_options``) plus ``progress_interval_s``, or
``client=`` to reuse a connection. Ray is reached lazily, on the first hook that needs it, so
building a manager never starts or joins a cluster.

What each hook costs the caller:

* blocking hooks (register, signal_demand, request_gpus, release, unregister) are one actor call,
  bounded by the hook's timeout plus a grace; a scheduler that dies meanwhile makes them raise
  :class:`SchedulerUnavailableError` at once;
* progress hooks (begin / bump / end) never touch the network in the caller's thread: a
  :class:`~rlix_plugin.progress.ProgressCoalescer` counts bumps and its thread sends
  fire-and-forget reports (``begin`` at once, then at most one per ``progress_interval_s`` per
  pipeline, the final count before ``end``). A report that fails is logged as "progress signal
  lost" and the rollout continues.

Each pipeline registered here gets a coordinator actor in its namespace and a thread in this
process that runs the scheduler's resizes through this manager's ``rlix_resize_infer``; a process
may register several pipelines.
"""

from __future__ import annotations

try:
    import ray
except ImportError as exc:  # the registry turns this into BackendUnavailableError
    raise ImportError(f"the ray backend needs ray ({exc}); install 'rlix-plugin[ray]'") from exc

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ClusterSpec,
    Grant,
    InvalidRequestError,
    SchedulerUnavailableError,
    SwitchCosts,
    hookimpl,
)
from rlix_plugin.progress import BEGIN, END, CoalescedProgressHooks, ProgressCoalescer, ProgressReport
from rlix_plugin.ray.calls import GRACE_S
from rlix_plugin.ray.client import RlixClient, connect
from rlix_plugin.ray.supply import ResizeServer, start_coordinator
from rlix_plugin.scheduler.topology import PoolTopology, validate_pipeline

if TYPE_CHECKING:
    from rlix_plugin.manager import RlixPluginManager

log = logging.getLogger("rlix_plugin.ray")

#: Reports whose answer is not checked yet; beyond this the oldest are forgotten unchecked.
MAX_OUTSTANDING = 1024


@dataclass
class _Registered:
    coordinator: Any
    server: ResizeServer


class RayBackend(CoalescedProgressHooks):
    """Answers the demand-side hooks with the ``rlix:scheduler`` actor."""

    def __init__(
        self,
        client: RlixClient | None = None,
        *,
        progress_interval_s: float = 0.05,
        **connect_options: Any,
    ) -> None:
        self._client = client
        self._connect_options = connect_options
        self._client_lock = threading.Lock()
        self._pm: RlixPluginManager | None = None
        self._pipelines: dict[str, _Registered] = {}
        self._sender = uuid.uuid4().hex
        self._seq = itertools.count(1)
        self._outstanding: deque[Any] = deque()
        self._outstanding_lock = threading.Lock()
        self._progress = ProgressCoalescer(self._deliver, min_interval_s=progress_interval_s)

    def bind(self, pm: RlixPluginManager) -> None:
        """Called by the manager factory: resizes of pipelines registered here go through ``pm``."""
        self._pm = pm

    @property
    def client(self) -> RlixClient:
        """The connection, made on first use."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = connect(**self._connect_options)
        return self._client

    @property
    def pipelines(self) -> tuple[str, ...]:
        """Pipelines registered through this backend and not unregistered yet."""
        return tuple(self._pipelines)

    # -- lifecycle --------------------------------------------------------------------------------

    @hookimpl
    def rlix_register_pipeline(
        self, pipeline_id: str, clusters: Mapping[str, ClusterSpec], switch_costs: SwitchCosts | None
    ) -> None:
        client = self.client
        # Validate here first: bad input gets its error before any actor is started.
        validate_pipeline(PoolTopology(client.info["num_gpus"], client.info["gpus_per_node"]), pipeline_id, clusters)
        if pipeline_id in self._pipelines:
            raise InvalidRequestError(f"pipeline {pipeline_id!r} is already registered through this backend")
        coordinator = start_coordinator(pipeline_id, client.is_registered)
        server = ResizeServer(pipeline_id, coordinator, self._run_resize).start()
        try:
            client.register_pipeline(pipeline_id, clusters, coordinator, switch_costs)
        except BaseException:
            self._stop_coordinator(_Registered(coordinator, server), "registration failed")
            raise
        self._pipelines[pipeline_id] = _Registered(coordinator, server)

    @hookimpl
    def rlix_unregister_pipeline(self, pipeline_id: str, reason: str) -> None:
        self._progress.forget(pipeline_id)
        entry = self._pipelines.pop(pipeline_id, None)
        try:
            client = self._client
            if client is None:
                # Never connected here: look for a scheduler, but do not start one just to tell it
                # that nothing is registered.
                client = connect(**{**self._connect_options, "create_if_missing": False})
            client.unregister_pipeline(pipeline_id, reason)
        except SchedulerUnavailableError as exc:
            # Nothing is held on a scheduler that is gone; unregistering must not mask the error
            # that brought the pipeline down.
            log.warning("unregister of pipeline %s: %s", pipeline_id, exc)
        finally:
            if entry is not None:
                self._stop_coordinator(entry, f"unregistered: {reason}")

    # -- demand -----------------------------------------------------------------------------------

    @hookimpl
    def rlix_signal_demand(self, pipeline_id: str, rollout_id: int, step_target: int, timeout_s: float) -> Grant:
        self.settle_progress()
        return self.client.call(
            "signal_demand", pipeline_id, rollout_id, step_target, timeout_s,
            timeout_s=_client_timeout(timeout_s), what=f"signal_demand({pipeline_id}, rollout {rollout_id})",
        )

    @hookimpl
    def rlix_request_gpus(
        self, pipeline_id: str, cluster: str, priority: int, step_target: int | None, timeout_s: float
    ) -> Grant:
        if cluster == ACTOR_INFER:
            self.settle_progress()
        return self.client.call(
            "request_gpus", pipeline_id, cluster, priority, step_target, timeout_s,
            timeout_s=_client_timeout(timeout_s), what=f"request_gpus({pipeline_id}_{cluster})",
        )

    @hookimpl
    def rlix_release(self, pipeline_id: str, cluster: str) -> None:
        if cluster == ACTOR_INFER:
            self._progress.forget(pipeline_id)
        timeout_s = float(self.client.info.get("resize_timeout_s", 120.0)) + 10.0
        self.client.call(
            "release", pipeline_id, cluster, timeout_s,
            timeout_s=timeout_s + GRACE_S, what=f"release({pipeline_id}_{cluster})",
        )

    @hookimpl
    def rlix_report_preempt(self, pipeline_id: str, dp_rank: int, retracted: int) -> None:
        try:
            # Fire and forget: submitting does not wait on the network.
            self.client.scheduler.report_preempt.remote(pipeline_id, dp_rank, retracted)
        except Exception as exc:
            log.warning("progress signal lost for pipeline %s (preempt report): %r", pipeline_id, exc)

    # -- progress plumbing ------------------------------------------------------------------------

    def flush_progress(self, timeout_s: float = 5.0) -> bool:
        """Wait until every progress call so far was applied by the scheduler (tests, shutdown).
        True on success; reports the scheduler rejected are logged, not raised."""
        deadline = time.monotonic() + timeout_s
        if not self._progress.flush(timeout_s):
            return False
        with self._outstanding_lock:
            refs = list(self._outstanding)
        if refs:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
            if len(ready) < len(refs):
                return False
        try:
            self._check_outstanding()
        except Exception as exc:
            log.warning("progress signal lost: %s", exc)
        return True

    def _deliver(self, report: ProgressReport) -> None:
        """Runs in the coalescer's thread: submit one report, fire and forget. Raises (and the
        coalescer logs "progress signal lost") when an earlier report turned out to have failed."""
        scheduler = self.client.scheduler
        seq = next(self._seq)
        if report.kind == END:
            ref = scheduler.clear_progress.remote(self._sender, seq, report.pipeline_id, report.mode, report.adapter_id)
        else:
            ref = scheduler.report_progress.remote(
                self._sender, seq, report.pipeline_id, report.mode, report.adapter_id,
                report.step_target, report.completed, report.target_weight_version, report.kind == BEGIN,
            )
        with self._outstanding_lock:
            self._outstanding.append(ref)
            while len(self._outstanding) > MAX_OUTSTANDING:
                self._outstanding.popleft()
        self._check_outstanding()

    def _check_outstanding(self) -> None:
        """Read the answers of reports that are done; raise if any was lost."""
        with self._outstanding_lock:
            refs = list(self._outstanding)
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        if not ready:
            return
        done = set(ready)
        with self._outstanding_lock:
            self._outstanding = deque(r for r in self._outstanding if r not in done)
        errors = []
        for ref in ready:
            try:
                answer = ray.get(ref)
            except Exception as exc:  # the scheduler died or the call failed in transit
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            if answer is not None:
                errors.append(str(answer))
        if errors:
            raise RuntimeError("; ".join(errors[:3]))

    # -- supply plumbing --------------------------------------------------------------------------

    def _run_resize(self, pipeline_id: str, remove: tuple[int, ...], add: tuple[int, ...]) -> tuple[int, ...] | None:
        pm = self._pm
        if pm is None:
            raise RuntimeError("the ray backend is not bound to a plugin manager (build it with get_plugin_manager)")
        return pm.hook.rlix_resize_infer(pipeline_id=pipeline_id, dp_ranks_to_remove=remove, dp_ranks_to_add=add)

    def _stop_coordinator(self, entry: _Registered, reason: str) -> None:
        entry.server.stop(timeout_s=0)
        try:
            entry.coordinator.close.remote(reason)
            ray.kill(entry.coordinator, no_restart=True)
        except Exception as exc:  # already gone: nothing left to stop
            log.debug("stopping a coordinator: %r", exc)
        entry.server.stop(timeout_s=2.0)

    def close(self, reason: str = "backend closed") -> None:
        """Unregister every pipeline registered here and stop the progress thread."""
        for pipeline_id in list(self._pipelines):
            try:
                self.rlix_unregister_pipeline(pipeline_id, reason)
            except Exception as exc:
                log.warning("unregistering %s on close: %r", pipeline_id, exc)
        self._progress.close()


def _client_timeout(timeout_s: object) -> float:
    """The caller's wait: the scheduler-side timeout plus a grace (the scheduler validates it)."""
    if isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool) and 0 < timeout_s < float("inf"):
        return float(timeout_s) + GRACE_S
    return GRACE_S


def make_backend(
    client: RlixClient | None = None,
    progress_interval_s: float = 0.05,
    **connect_options: Any,
) -> RayBackend:
    """Build the plugin; options are :func:`rlix_plugin.ray.connect`'s, applied on first use."""
    return RayBackend(client, progress_interval_s=progress_interval_s, **connect_options)


__all__ = ["RayBackend", "make_backend"]
