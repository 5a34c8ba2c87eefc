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
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlix_plugin.hookspecs import Grant, InvalidRequestError, SchedulerUnavailableError
from rlix_plugin.progress import ProgressReport
from rlix_plugin.ray.client import RlixClient, connect
from rlix_plugin.ray.resize_server import ResizeServer, start_coordinator
from rlix_plugin.scheduler.topology import PoolTopology, validate_pipeline

from .hooks import SchedulerHooks
from .port import Registration, ResizeHook

log = logging.getLogger(__name__)

#: Reports whose answer is not checked yet; beyond this the oldest are forgotten unchecked.
MAX_OUTSTANDING = 1024


@dataclass
class _Registered:
    coordinator: Any
    server: ResizeServer


class RayPort:
    """The :class:`~.port.SchedulerPort` of the ``rlix:scheduler`` actor of a Ray cluster."""

    name = "ray"

    def __init__(self, client: RlixClient | None = None, **connect_options: Any) -> None:
        self._client = client
        self._connect_options = connect_options
        self._client_lock = threading.Lock()
        self._pipelines: dict[str, _Registered] = {}
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
        validate_pipeline(PoolTopology(client.info["num_gpus"], client.info["gpus_per_node"]), pipeline_id,
                          registration.clusters)
        if pipeline_id in self._pipelines:
            raise InvalidRequestError(f"pipeline {pipeline_id!r} is already registered through this backend")
        # The coordinator takes resizes only from whoever presents this token: the scheduler,
        # which alone learns it, through the registration below.
        resize_token = secrets.token_urlsafe(24)
        coordinator = start_coordinator(pipeline_id, client.is_registered, resize_token)
        server = ResizeServer(pipeline_id, coordinator, resize).start()
        entry = _Registered(coordinator, server)
        try:
            lease = client.register_pipeline(registration, coordinator, resize_token)
        except BaseException:
            self._stop_coordinator(entry, "registration failed")
            raise
        self._pipelines[pipeline_id] = entry
        return lease

    def unregister(self, pipeline_id: str, lease: str, reason: str) -> None:
        entry = self._pipelines.pop(pipeline_id, None)
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
        return self.client.signal_demand(pipeline_id, lease, rollout_id, step_target, timeout_s)

    def request(self, pipeline_id: str, lease: str, cluster: str, priority: int, step_target: int | None,
                timeout_s: float) -> Grant:
        return self.client.request_gpus(pipeline_id, lease, cluster, priority, step_target, timeout_s)

    def release(self, pipeline_id: str, lease: str, cluster: str) -> None:
        self.client.release(pipeline_id, lease, cluster)

    def report_preempt(self, pipeline_id: str, lease: str, dp_rank: int, retracted: int) -> None:
        # Fire and forget: submitting does not wait on the network.
        self.client.scheduler.report_preempt.remote(pipeline_id, lease, dp_rank, retracted)

    # -- progress ---------------------------------------------------------------------------------

    def send_progress(self, lease: str, report: ProgressReport) -> None:
        """Runs in the coalescer's thread: submit one report, fire and forget. Raises when an
        earlier report turned out to have failed (the hook layer logs "progress signal lost")."""
        ref = self.client.scheduler.apply_progress.remote(self._sender, next(self._seq), lease, report)
        with self._outstanding_lock:
            self._outstanding.append(ref)
            while len(self._outstanding) > MAX_OUTSTANDING:
                self._outstanding.popleft()
        self._check_outstanding()

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
        entry.server.stop(timeout_s=0)
        try:
            entry.coordinator.close.remote(reason)
            ray.kill(entry.coordinator, no_restart=True)
        except Exception as exc:  # already gone: nothing left to stop
            log.debug("stopping a coordinator: %r", exc)
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
    return SchedulerHooks(RayPort(client, **connect_options), resize, progress_interval_s=progress_interval_s,
                          leases=leases)


__all__ = ["RayPort", "make_backend"]
