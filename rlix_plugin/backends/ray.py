"""The ``ray`` backend: the hooks answered by the shared scheduler actor on a Ray cluster.

``get_plugin_manager("ray", backend_options={...})``; options are those of
:func:`rlix_plugin.ray.connect` (``address``, ``create_if_missing``, ``num_gpus``,
``gpus_per_node``, ``resize_timeout_s``, ``init_options``) plus ``progress_interval_s``, or
``client=`` to reuse a connection. Ray is reached lazily, on the first hook that needs it, so
building a manager never starts or joins a cluster.

What each hook costs the caller:

* blocking hooks (register, signal_demand, request_gpus, release, unregister) are one actor call,
  bounded by the hook's timeout plus a grace. When the scheduler actor dies under them, Ray
  restarts it and the call is made again against the new incarnation, with its idempotency key
  and the time it has left: the framework sees latency, and the same grant. A scheduler that is
  gone for good (killed without restart, shut down) makes them raise
  :class:`SchedulerUnavailableError` at once;
* progress hooks (begin / bump / end) never touch the network in the caller's thread: a
  :class:`~rlix_plugin.progress.ProgressCoalescer` counts bumps and its thread sends
  fire-and-forget reports (``begin`` at once, then at most one per ``progress_interval_s`` per
  pipeline, the final count before ``end``). A report that fails is logged as "progress signal
  lost" and the rollout continues.

Each pipeline registered here gets a coordinator actor in its namespace and a thread in this
process that runs the scheduler's resizes through this manager's ``rlix_resize_infer``; a process
may register several pipelines.

After a scheduler restart, this port is what the scheduler reconciles with: it knows, per
pipeline, the DP ranks its engines last answered awake, the stages it holds and the calls it has
in flight, and reports them (:class:`~rlix_plugin.scheduler.rehydrate.PipelineReport`) when the
restarted scheduler asks, once the resizes it is running are over; then it re-sends each
stream's latest progress report, which the restart may have lost (latest wins, so re-sending is
safe; a re-sent report of a rollout older than the pipeline's current one is ignored).
"""

from __future__ import annotations

try:
    import ray
except ImportError as exc:  # the registry turns this into BackendUnavailableError
    raise ImportError(f"the ray backend needs ray ({exc}); install 'rlix-plugin[ray]'") from exc

import dataclasses
import itertools
import logging
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import ActorUnavailableError

from rlix_plugin.hookspecs import ACTOR_INFER, Grant, InvalidRequestError, SchedulerUnavailableError
from rlix_plugin.progress import BEGIN, END, ProgressReport
from rlix_plugin.ray.client import DEFAULT_RESIZE_TIMEOUT_S, RlixClient, connect, new_request_id
from rlix_plugin.ray.coordinator import ReconcileRequest
from rlix_plugin.ray.resize_server import ResizeServer, start_coordinator
from rlix_plugin.scheduler.rehydrate import RELEASE, REQUEST, CallInFlight, PipelineReport
from rlix_plugin.scheduler.topology import PoolTopology, validate_pipeline

from .hooks import SchedulerHooks
from .port import Registration, ResizeHook

log = logging.getLogger(__name__)

#: Reports whose answer is not checked yet; beyond this the oldest are forgotten unchecked.
MAX_OUTSTANDING = 1024


#: Extra seconds a reattach waits, beyond the resize timeout, for the resizes in flight to end.
REATTACH_GRACE_S = 5.0


@dataclass
class _Registered:
    """A pipeline registered through this port, and what it knows of itself for a reconcile."""

    coordinator: Any
    resize_token: str
    server: ResizeServer | None = None
    lease: str | None = None
    #: DP ranks the engines answered awake after their last resize (None: the hook said nothing).
    awake: tuple[int, ...] | None = ()
    #: Stage cluster -> priority, for every grant received and not being released.
    held: dict[str, int] = field(default_factory=dict)
    #: Idempotency key -> (kind, cluster, deadline) of each blocking call in flight.
    calls: dict[str, tuple[str, str, float]] = field(default_factory=dict)


class RayPort:
    """The :class:`~.port.SchedulerPort` of the ``rlix:scheduler`` actor of a Ray cluster."""

    name = "ray"

    def __init__(self, client: RlixClient | None = None, **connect_options: Any) -> None:
        self._client = client
        self._connect_options = connect_options
        self._client_lock = threading.Lock()
        self._pipelines: dict[str, _Registered] = {}
        #: Guards what the entries know of themselves, and the latest progress reports.
        self._lock = threading.Lock()
        #: (pipeline, mode, adapter) -> the latest report sent, re-sent after a restart.
        self._latest: dict[tuple[str, str, str | None], tuple[str, ProgressReport]] = {}
        self._sender = uuid.uuid4().hex
        self._seq = itertools.count(1)
        self._outstanding: deque[Any] = deque()
        self._outstanding_lock = threading.Lock()

    @property
    def client(self) -> RlixClient:
        """The connection, made on first use."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = connect(**self._connect_options)
        return self._client

    # -- lifecycle --------------------------------------------------------------------------------

    def register(self, registration: Registration, resize: ResizeHook) -> str:
        client = self.client
        pipeline_id = registration.pipeline_id
        # Validate here first: bad input gets its error before any actor is started.
        validate_pipeline(
            PoolTopology(client.info["num_gpus"], client.info["gpus_per_node"]), pipeline_id, registration.clusters
        )
        if pipeline_id in self._pipelines:
            raise InvalidRequestError(f"pipeline {pipeline_id!r} is already registered through this backend")
        # The coordinator takes resizes only from whoever presents this token: the scheduler,
        # which alone learns it, through the registration below (and again when it restarts).
        resize_token = secrets.token_urlsafe(24)
        coordinator = start_coordinator(pipeline_id, client.is_registered, resize_token)
        entry = _Registered(coordinator, resize_token)

        def tracked(pid: str, remove: tuple[int, ...], add: tuple[int, ...]) -> tuple[int, ...] | None:
            awake = resize(pid, remove, add)
            with self._lock:
                entry.awake = tuple(sorted(awake)) if awake is not None else None
            return awake

        entry.server = ResizeServer(
            pipeline_id, coordinator, tracked, on_reconcile=lambda request: self._reattach(pipeline_id, request)
        ).start()
        try:
            # The key makes the registration safe to retry through a scheduler restart.
            lease = client.register_pipeline(registration, coordinator, resize_token, secrets.token_urlsafe(24))
        except BaseException:
            self._stop_coordinator(entry, "registration failed")
            raise
        entry.lease = lease
        self._pipelines[pipeline_id] = entry
        return lease

    def unregister(self, pipeline_id: str, lease: str, reason: str) -> None:
        entry = self._pipelines.pop(pipeline_id, None)
        self._forget_progress(pipeline_id)
        try:
            client = self._client
            if client is None:
                # Never connected here: look for a scheduler, but do not start one just to tell it
                # that nothing is registered.
                client = connect(**{**self._connect_options, "create_if_missing": False})
            client.unregister_pipeline(pipeline_id, lease, reason)
        except SchedulerUnavailableError as exc:
            # Nothing is held on a scheduler that is gone; unregistering must not mask the error
            # that brought the pipeline down.
            log.warning("unregister of pipeline %s: %s", pipeline_id, exc)
        finally:
            if entry is not None:
                self._stop_coordinator(entry, f"unregistered: {reason}")

    # -- demand -----------------------------------------------------------------------------------

    def signal_demand(self, pipeline_id: str, lease: str, rollout_id: int, step_target: int, timeout_s: float) -> Grant:
        key = self._calling(pipeline_id, REQUEST, ACTOR_INFER, timeout_s)
        try:
            return self.client.signal_demand(pipeline_id, lease, rollout_id, step_target, timeout_s, key)
        finally:
            self._called(pipeline_id, key)

    def request(
        self, pipeline_id: str, lease: str, cluster: str, priority: int, step_target: int | None, timeout_s: float
    ) -> Grant:
        key = self._calling(pipeline_id, REQUEST, cluster, timeout_s)
        held = None
        try:
            grant = self.client.request_gpus(pipeline_id, lease, cluster, priority, step_target, timeout_s, key)
            held = priority if cluster != ACTOR_INFER else None
            return grant
        finally:
            self._called(pipeline_id, key, cluster, held)

    def release(self, pipeline_id: str, lease: str, cluster: str) -> None:
        if cluster == ACTOR_INFER:
            self._forget_progress(pipeline_id)
        timeout_s = float(self.client.info.get("resize_timeout_s", DEFAULT_RESIZE_TIMEOUT_S)) + 10.0
        key = self._calling(pipeline_id, RELEASE, cluster, timeout_s)
        try:
            self.client.release(pipeline_id, lease, cluster)
        finally:
            self._called(pipeline_id, key)

    # -- what a reconcile reports -----------------------------------------------------------------

    def _calling(self, pipeline_id: str, kind: str, cluster: str, timeout_s: float) -> str:
        """Note a blocking call about to be made (a release stops holding its stage at once)."""
        key = new_request_id()
        with self._lock:
            entry = self._pipelines.get(pipeline_id)
            if entry is not None:
                entry.calls[key] = (kind, cluster, time.monotonic() + timeout_s)
                if kind == RELEASE:
                    entry.held.pop(cluster, None)
        return key

    def _called(self, pipeline_id: str, key: str, cluster: str | None = None, held: int | None = None) -> None:
        """The call is over; a granted stage is held from now on (in the same step, so that a
        report never sees the stage neither requested nor held)."""
        with self._lock:
            entry = self._pipelines.get(pipeline_id)
            if entry is not None:
                entry.calls.pop(key, None)
                if cluster is not None and held is not None:
                    entry.held[cluster] = held

    def report(self, pipeline_id: str) -> PipelineReport | None:
        """What this process knows of the pipeline, for a restarted scheduler (None: not ours)."""
        now = time.monotonic()
        with self._lock:
            entry = self._pipelines.get(pipeline_id)
            if entry is None:
                return None
            calls = tuple(
                CallInFlight(key, kind, cluster, max(0.0, deadline - now))
                for key, (kind, cluster, deadline) in entry.calls.items()
            )
            return PipelineReport(entry.awake, dict(entry.held), calls)

    def _reattach(self, pipeline_id: str, request: ReconcileRequest) -> None:
        """On the server's thread: a restarted scheduler asks; answer it once the resizes this
        process is running are over, then re-send the progress the restart may have lost."""
        entry = self._pipelines.get(pipeline_id)
        if entry is None or entry.lease is None or entry.server is None:
            return  # still registering: the registration's retry reattaches it
        limit = float(self.client.info.get("resize_timeout_s", DEFAULT_RESIZE_TIMEOUT_S)) + REATTACH_GRACE_S
        if not entry.server.wait_idle(limit):
            log.warning("pipeline %s: resizes still running after %.0fs; reporting anyway", pipeline_id, limit)
        report = self.report(pipeline_id)
        if report is None:
            return
        try:
            done = self.client.reattach(pipeline_id, entry.lease, entry.resize_token, report, entry.coordinator)
        except Exception as exc:  # the scheduler fences it after its reconcile timeout
            log.error(
                "pipeline %s could not reattach to the restarted scheduler (epoch %s): %r",
                pipeline_id,
                request.epoch,
                exc,
            )
            return
        log.info("pipeline %s reattached to the restarted scheduler (epoch %s): %s", pipeline_id, request.epoch, done)
        self.client.saw_epoch(request.epoch)  # this process's calls to the dead one are made again now
        self._resend_progress(pipeline_id)

    def report_preempt(self, pipeline_id: str, lease: str, dp_rank: int, retracted: int) -> None:
        # Fire and forget: submitting does not wait on the network.
        self.client.scheduler.report_preempt.remote(pipeline_id, lease, dp_rank, retracted)

    # -- progress ---------------------------------------------------------------------------------

    def send_progress(self, lease: str, report: ProgressReport) -> None:
        """Runs in the coalescer's thread: submit one report, fire and forget. Raises when an
        earlier report turned out to have failed (the hook layer logs "progress signal lost");
        a report lost to a scheduler restart is not a failure: it is re-sent after it."""
        with self._lock:
            self._latest[(report.pipeline_id, report.mode, report.adapter_id)] = (lease, report)
        self._submit(lease, report)
        self._check_outstanding()

    def _submit(self, lease: str, report: ProgressReport) -> None:
        ref = self.client.scheduler.apply_progress.remote(self._sender, next(self._seq), lease, report)
        with self._outstanding_lock:
            self._outstanding.append(ref)
            while len(self._outstanding) > MAX_OUTSTANDING:
                self._outstanding.popleft()

    def _resend_progress(self, pipeline_id: str) -> None:
        """Send each stream's latest report again; an open stream's as a ``begin``, which re-opens
        it on a scheduler that lost the begin (its count is absolute, so nothing is counted
        twice)."""
        with self._lock:
            latest = [v for k, v in self._latest.items() if k[0] == pipeline_id]
        for lease, report in latest:
            self._submit(lease, report if report.kind == END else dataclasses.replace(report, kind=BEGIN))

    def _forget_progress(self, pipeline_id: str) -> None:
        with self._lock:
            for key in [k for k in self._latest if k[0] == pipeline_id]:
                del self._latest[key]

    def flush(self, timeout_s: float) -> bool:
        """Wait until every report sent so far was applied (reports the scheduler rejected are
        logged, not raised)."""
        with self._outstanding_lock:
            refs = list(self._outstanding)
        if refs:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            if len(ready) < len(refs):
                return False
        try:
            self._check_outstanding()
        except Exception as exc:
            log.warning("progress signal lost: %s", exc)
        return True

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
            except ActorUnavailableError:
                continue  # the scheduler restarted under it: re-sent once the pipeline reattaches
            except Exception as exc:  # the scheduler died or the call failed in transit
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            if answer is not None:
                errors.append(str(answer))
        if errors:
            raise RuntimeError("; ".join(errors[:3]))

    # -- reading ----------------------------------------------------------------------------------

    def is_registered(self, pipeline_id: str) -> bool:
        return self.client.is_registered(pipeline_id)

    def diagnostic(self, headline: str) -> str:
        try:
            return self.client.diagnostic(headline, timeout_s=10.0)
        except Exception as exc:
            return f"{headline}\n(the scheduler actor did not answer: {exc!r})"

    # -- plumbing ---------------------------------------------------------------------------------

    def _stop_coordinator(self, entry: _Registered, reason: str) -> None:
        if entry.server is not None:
            entry.server.stop(timeout_s=0)
        try:
            entry.coordinator.close.remote(reason)
            ray.kill(entry.coordinator, no_restart=True)
        except Exception as exc:  # already gone: nothing left to stop
            log.debug("stopping a coordinator: %r", exc)
        if entry.server is not None:
            entry.server.stop(timeout_s=2.0)

    def close(self) -> None:
        for entry in list(self._pipelines.values()):
            self._stop_coordinator(entry, "backend closed")
        self._pipelines.clear()


def make_backend(
    resize: ResizeHook,
    client: RlixClient | None = None,
    progress_interval_s: float = 0.05,
    leases: Mapping[str, str] | None = None,
    **connect_options: Any,
) -> SchedulerHooks:
    """Build the plugin; options are :func:`rlix_plugin.ray.connect`'s, applied on first use.
    ``leases`` are pipelines' leases handed over by the process that registered them."""
    return SchedulerHooks(
        RayPort(client, **connect_options), resize, progress_interval_s=progress_interval_s, leases=leases
    )


__all__ = ["RayPort", "make_backend"]
