"""The scheduler as a Ray actor: ``rlix:scheduler`` in namespace ``rlix``.

It hosts a :class:`~rlix_plugin.scheduler.service.SchedulerService` on the actor's event loop and
adds only what being remote needs:

* resizes go to each pipeline's coordinator actor (:mod:`.coordinator`), concurrently across
  pipelines, each bounded by the service's ``resize_timeout_s``; a coordinator that fails or
  times out gets the service's policy: that pipeline is fenced, the others keep running;
* a death watch per coordinator: when a pipeline's process dies (and its coordinator with it) the
  pipeline is unregistered and its GPUs go back to the pool, so a crashed run leaves nothing
  behind (docs/design.md, failure mode F10);
* progress arrives fire-and-forget from many processes, and Ray does not promise that an async
  actor runs one sender's calls in order. Across rollouts the report's own epoch (its
  ``rollout_id``) orders them, in the demand ledger; within a rollout, each report carries its
  sender's sequence number and an older one than already applied is dropped (reports are
  absolute: latest wins);
* persistence and restart: every committed change is saved to the cluster's GCS key-value store
  (:mod:`.kv_store`) before anyone hears of it. When the actor dies, Ray restarts it
  (``max_restarts``); the new incarnation claims a new epoch, loads the record, finds each
  pipeline's coordinator by name in the pipeline's own namespace (a pipeline whose coordinator
  is gone is unregistered), asks it to :meth:`~.coordinator.Coordinator.reconcile`, and plans
  nothing until every pipeline has reattached (:meth:`SchedulerActor.reattach`: its lease, its
  resize token, its report) or was fenced for not answering within ``reconcile_timeout_s``.
  Callers' interrupted calls are retried by their clients (:mod:`.calls`) with idempotency keys.
* the operator's view: the decision log (:mod:`rlix_plugin.scheduler.journal`, read with
  :meth:`SchedulerActor.events`, which can wait for the next decision) and the metrics, exported
  through Ray's metrics pipeline (:mod:`rlix_plugin.metrics.ray`).

It never calls the orchestrator: requests, progress, releases, resizes and reaping use only the
service and the coordinators (a static test walks this module to keep it that way), so killing
the orchestrator leaves running pipelines unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from rlix_plugin.backends.port import Registration
from rlix_plugin.hookspecs import Grant, InvalidRequestError, Priority, RlixError
from rlix_plugin.metrics import catalog as metric
from rlix_plugin.metrics.ray import GAUGE_PERIOD_S, RaySink
from rlix_plugin.metrics.values import Recorder, snapshot_gauges
from rlix_plugin.progress import ProgressReport
from rlix_plugin.scheduler.journal import Journal
from rlix_plugin.scheduler.leases import lease_digest
from rlix_plugin.scheduler.persist import StateFormatError
from rlix_plugin.scheduler.policy import DEFAULT_POLICY
from rlix_plugin.scheduler.rehydrate import PipelineReport
from rlix_plugin.scheduler.service import FENCE_GRACE_S, SchedulerService
from rlix_plugin.scheduler.topology import PoolTopology

from .calls import cancel_quietly
from .coordinator import SUPERSEDED
from .kill import kill_namespace
from .kv_store import RayKVStore
from .names import COORDINATOR_NAME, HEAD_NODE_RESOURCE, NAMESPACE, PROTOCOL, pipeline_namespace

log = logging.getLogger(__name__)

#: Seconds the scheduler waits for an old coordinator to answer a ping before deciding, on
#: re-registration of the same pipeline id, that it belongs to a dead run.
PING_TIMEOUT_S = 2.0

#: Seconds without a poll from a pipeline's process before the pipeline is fenced as unresponsive.
LIVENESS_TIMEOUT_S = 60.0

#: Committed scheduling decisions kept for :meth:`SchedulerActor.decisions` (oldest dropped first).
DECISIONS_KEPT = 4096

#: Longest one :meth:`SchedulerActor.events` call may wait for a new decision: a follower asks
#: again, and a call that waits holds one slot of ``max_concurrency``.
EVENTS_WAIT_MAX_S = 30.0

#: Key of the count of schedulers started on the cluster, in Ray's internal key-value store (it
#: lives in the GCS, so it outlives any one scheduler): the ``rlix_scheduler_restarts_total``.
STARTS_KEY = b"scheduler_starts"

#: Seconds a restarted scheduler waits, beyond the resize timeout (a pipeline reattaches once the
#: resizes it was running at the crash are over), for every pipeline to reattach before it fences
#: the silent ones and plans without them.
RECONCILE_GRACE_S = 10.0

#: Options of the scheduler actor. Why each value:
SCHEDULER_OPTIONS: dict[str, Any] = {
    # Its state is saved on every commit and rehydrated by the new incarnation, which reconciles
    # with every pipeline before planning (docs/design.md, failure mode F13: a restart used to come
    # back empty while pipelines held GPUs). So a crash (an OOM of the head node's worker, a Ray
    # bug) costs the pipelines latency, not their run; restarts never run out. A deliberate stop is
    # ray.kill(no_restart=True), or an operator's shutdown, which also clears the saved state.
    "max_restarts": -1,
    # Not Ray's retries: a call interrupted by a restart is made again by its client, with the
    # time it has left and its idempotency key (rlix_plugin.ray.calls), so a retried request
    # returns the first attempt's grant instead of asking twice, and the caller's timeout holds.
    "max_task_retries": 0,
    # Every blocked request_gpus / signal_demand / release holds one slot (a coroutine on the one
    # event loop, not a thread) for its whole wait. Progress, status and new requests must never
    # queue behind those waits or behind a long resize (docs/design.md, failure mode F12), so the
    # limit sits far above the worst case: 256 pipelines x (4 clusters + 1 release) = 1280 blocked
    # calls.
    "max_concurrency": 4096,
    # Bookkeeping only: it must not take a CPU slot that a pipeline's workers need.
    "num_cpus": 0,
    # Shared by every job on the cluster and outlives the driver that happened to start it.
    "lifetime": "detached",
    # On the head node, which lives as long as the cluster.
    "resources": {HEAD_NODE_RESOURCE: 0.001},
}


class SchedulerActor:
    """The shared scheduler. Every method is a coroutine on the actor's single event loop, which
    is what the service requires; a method that does not await runs atomically."""

    def __init__(
        self,
        num_gpus: int,
        gpus_per_node: int,
        resize_timeout_s: float = 120.0,
        policy: str = DEFAULT_POLICY,
        operator_digest: str | None = None,
        fence_grace_s: float = FENCE_GRACE_S,
        liveness_timeout_s: float = LIVENESS_TIMEOUT_S,
        persist: bool = True,
        reconcile_timeout_s: float | None = None,
    ) -> None:
        self._actor_id = ray.get_runtime_context().get_actor_id()
        store = RayKVStore() if persist else None
        self._service = SchedulerService(
            PoolTopology(num_gpus, gpus_per_node),
            resize_timeout_s=resize_timeout_s,
            policy=policy,
            operator_digest=operator_digest,
            fence_grace_s=fence_grace_s,
            on_reclaim=self._stop_pipeline,
            store=store,
        )
        self._service.add_record_part("actor", self._record)
        self._reconcile_timeout_s = (
            reconcile_timeout_s if reconcile_timeout_s is not None else resize_timeout_s + RECONCILE_GRACE_S
        )
        self._liveness_timeout_s = liveness_timeout_s
        self._coordinators: dict[str, Any] = {}
        #: pipeline -> digest of its registration key, to answer a retried registration.
        self._registrations: dict[str, str] = {}
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._last_seq: dict[tuple[str, str], int] = {}
        self._progress_reports: dict[str, int] = {}
        self._reaped: dict[str, str] = {}
        self._started_at = time.time()
        self._decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_KEPT)
        self._service.add_listener(self._record_decision)
        self._journal = Journal(self._service.state)
        self._service.add_observer(self._journal)
        self._new_decision: asyncio.Event | None = None
        self._journal.log.listeners.append(self._wake_followers)
        self._metrics = RaySink()
        self._recorder = Recorder(self._metrics)
        self._service.add_observer(self._recorder)
        self._journal.log.listeners.append(self._recorder.decided)
        self._metrics.inc(metric.RESTARTS, (), _count_start())
        self._gauges: asyncio.Task[None] | None = None
        #: Pipelines restored from the store at this (re)start, reconciled by :meth:`resume`.
        self._restored: list[str] = []
        self._resuming: asyncio.Task[None] | None = None
        #: Wall-clock times of the last restart and of the end of its reconciliation, and how
        #: many DP ranks were in a transition the dead incarnation had started (for operators).
        self._restarted_at: float | None = None
        self._reconciled_at: float | None = None
        self._in_doubt = 0
        if store is not None:
            self._restore(store)
        if self._restored:
            # Reconciliation must not wait for a caller: ask this actor to begin as soon as it
            # serves. From a thread, until it is answered: a call this actor makes to itself
            # while it is being restarted may be lost.
            threading.Thread(
                target=_resume,
                args=(ray.get_runtime_context().current_actor, lambda: self._resuming is not None),
                daemon=True,
                name="rlix-resume",
            ).start()

    def _restore(self, store: RayKVStore) -> None:
        """Rehydrate from the store when the record is this actor's own (a restart); a new actor
        (a first start, or one replacing a scheduler an operator stopped) starts empty."""
        stored = store.load()
        if stored is None or stored.payload.get("actor", {}).get("actor_id") != self._actor_id:
            return
        try:
            self._restored = self._service.restore(stored.payload)
        except (StateFormatError, KeyError, TypeError, ValueError) as exc:
            log.error("the saved scheduler state (epoch %s) cannot be restored, starting empty: %r", stored.epoch, exc)
            return
        actor = stored.payload["actor"]
        self._registrations.update(actor.get("registrations", {}))
        self._reaped.update(actor.get("reaped", {}))
        self._restarted_at = time.time()
        self._in_doubt = sum(len(a.waking) + len(a.sleeping) for a in self._service.state.generation.values())
        if self._restored:
            self._service.add_listener(self._note_reconciled)
        else:
            self._reconciled_at = self._restarted_at  # nobody to reconcile with
        log.warning(
            "scheduler restarted (epoch %s); restored %d pipeline(s): %s",
            self._service.epoch,
            len(self._restored),
            self._restored,
        )

    def _note_reconciled(self, event: str, service: SchedulerService) -> None:
        if self._reconciled_at is None and not service.recovering:
            self._reconciled_at = time.time()

    def _record(self) -> dict[str, Any]:
        return {"actor_id": self._actor_id, "registrations": dict(self._registrations), "reaped": dict(self._reaped)}

    # -- pipelines ----------------------------------------------------------------------------------

    async def register_pipeline(
        self, registration: Registration, coordinator: Any, resize_token: str, registration_key: str | None = None
    ) -> str:
        """Register and admit a pipeline whose resizes go to ``coordinator`` (presenting
        ``resize_token``, which only it and this actor know); returns its lease. A pipeline id
        still held by a run whose coordinator is dead is reaped first; one whose coordinator
        answers is refused (``InvalidRequestError``). The same registration again with the same
        ``registration_key`` (a caller retrying after a lost answer, or after this scheduler
        restarted under the call) gets a new lease: the first one never reached anybody."""
        await self._start()
        pipeline_id = registration.pipeline_id
        key = lease_digest(registration_key) if isinstance(registration_key, str) and registration_key else None
        if (
            key is not None
            and pipeline_id in self._service.state.pipelines
            and self._registrations.get(pipeline_id) == key
        ):
            lease = await self._service.reissue_lease(
                pipeline_id, self._resizer(pipeline_id, coordinator, resize_token)
            )
            self._follow(pipeline_id, coordinator)
            return lease
        old = self._coordinators.get(pipeline_id)
        if old is not None and not await self._answers(old):
            await self._reap(pipeline_id, old, "re-registered while its previous coordinator is dead")
        if key is not None and pipeline_id not in self._service.state.pipelines:
            self._registrations[pipeline_id] = key  # saved with the registration itself
        try:
            lease = await self._service.register_pipeline(
                pipeline_id,
                registration.clusters,
                self._resizer(pipeline_id, coordinator, resize_token),
                switch_costs=registration.switch_costs,
                limits=registration.limits,
            )
        except BaseException:
            if pipeline_id not in self._service.state.pipelines:
                self._registrations.pop(pipeline_id, None)
            raise
        self._reaped.pop(pipeline_id, None)
        self._follow(pipeline_id, coordinator)
        return lease

    async def reattach(
        self, pipeline_id: str, lease: str, resize_token: str, report: PipelineReport, coordinator: Any = None
    ) -> dict[str, Any]:
        """A pipeline's process answers a restarted scheduler's reconcile request: its resizes go
        to ``coordinator`` (or the one found at the restart) with ``resize_token`` from now on,
        and the restored state is reconciled with ``report``. Needs the pipeline's lease."""
        await self._start()
        coordinator = coordinator if coordinator is not None else self._coordinators.get(pipeline_id)
        if coordinator is None:
            raise InvalidRequestError(f"pipeline {pipeline_id!r}: no coordinator to send its resizes to")
        done = await self._service.reattach(
            pipeline_id, lease, self._resizer(pipeline_id, coordinator, resize_token), report
        )
        self._follow(pipeline_id, coordinator)
        return done

    async def resume(self) -> None:
        """Begin the reconciliation of a restarted scheduler (idempotent; called by the actor
        itself once it serves)."""
        await self._start()

    async def retire(self, operator: str | None) -> None:
        """Forget the saved state before a deliberate stop (an operator action): nothing restarts
        from it."""
        self._service.leases.check_operator(operator, "shutting the scheduler down")
        store = self._service.store
        await self._service.stop()
        if store is not None:
            await asyncio.to_thread(store.clear)

    async def unregister_pipeline(
        self, pipeline_id: str, lease: str | None, reason: str, operator: str | None = None
    ) -> None:
        """Remove a pipeline: its lease holder may, and so may an operator."""
        await self._service.unregister_pipeline(pipeline_id, lease, reason, operator=operator)
        if pipeline_id not in self._service.state.pipelines:
            self._forget(pipeline_id)

    async def is_registered(self, pipeline_id: str) -> bool:
        return pipeline_id in self._service.state.pipelines

    async def drain(self, operator: str | None) -> list[str]:
        """Refuse new registrations from now on (an operator action); returns who is registered."""
        return self._service.drain(operator)

    async def check_operator(self, operator: str | None, action: str) -> None:
        """Raise :class:`NotPipelineOwnerError` unless ``operator`` is the operator credential."""
        self._service.leases.check_operator(operator, action)

    # -- requests and releases --------------------------------------------------------------------

    async def request_gpus(
        self,
        pipeline_id: str,
        lease: str,
        cluster: str,
        priority: int,
        step_target: int | None,
        timeout_s: float,
        request_id: str | None = None,
    ) -> Grant:
        await self._start()
        grant = await self._service.request_gpus(
            pipeline_id, lease, cluster, priority, step_target, timeout_s, _key(request_id)
        )
        self._recorder.waited(metric.REQUEST_GPUS, pipeline_id, priority, grant.waited_s)
        return grant

    async def signal_demand(
        self,
        pipeline_id: str,
        lease: str,
        rollout_id: int,
        step_target: int,
        timeout_s: float,
        request_id: str | None = None,
    ) -> Grant:
        await self._start()
        grant = await self._service.signal_demand(
            pipeline_id, lease, rollout_id, step_target, timeout_s, _key(request_id)
        )
        self._recorder.waited(metric.SIGNAL_DEMAND, pipeline_id, Priority.GENERATION, grant.waited_s)
        return grant

    async def release(self, pipeline_id: str, lease: str, cluster: str, timeout_s: float) -> None:
        await self._start()
        await self._service.release(pipeline_id, lease, cluster, timeout_s)

    async def release_and_request(
        self,
        pipeline_id: str,
        lease: str,
        release_cluster: str,
        cluster: str,
        priority: int,
        step_target: int | None,
        timeout_s: float,
        request_id: str | None = None,
    ) -> Grant:
        await self._start()
        return await self._service.release_and_request(
            pipeline_id, lease, release_cluster, cluster, priority, step_target, timeout_s, _key(request_id)
        )

    async def planned_release(self, pipeline_id: str, lease: str, dp_ranks: Iterable[int], timeout_s: float) -> None:
        await self._service.planned_release(pipeline_id, lease, tuple(dp_ranks), timeout_s)

    # -- progress (fire-and-forget from the pipelines) ----------------------------------------------

    async def apply_progress(self, sender: str, seq: int, lease: str, report: ProgressReport) -> str | None:
        """Apply one coalesced report. Returns ``None``, or why it was dropped: the sender checks
        the answer later and logs "progress signal lost" (an exception here would only surface
        as an unhandled-error log line in a process that never reads it)."""
        await self._start()
        if not isinstance(report, ProgressReport):
            return f"InvalidRequestError: not a progress report: {report!r:.80}"
        pipeline_id = report.pipeline_id
        if not self._in_order(sender, pipeline_id, seq):
            return None  # a newer report of this sender was applied already; latest wins
        try:
            self._service.apply_progress(lease, report)
        except RlixError as exc:
            return f"{type(exc).__name__}: {exc}"
        self._progress_reports[pipeline_id] = self._progress_reports.get(pipeline_id, 0) + 1
        return None

    async def report_preempt(self, pipeline_id: str, lease: str, dp_rank: int, retracted: int) -> None:
        try:
            self._service.report_preempt(pipeline_id, lease, dp_rank, retracted)
        except RlixError as exc:
            log.warning("preempt report of pipeline %s refused: %s", pipeline_id, exc)

    # -- reading ------------------------------------------------------------------------------------

    async def describe(self) -> dict[str, Any]:
        """Who this scheduler is: protocol, pool, options, where it runs, what it serves, and
        whether it is still reconciling after a restart."""
        await self._start()
        state = self._service.state
        return {
            "epoch": self._service.epoch,
            "recovering": self._service.recovering,
            "restarted_at": self._restarted_at,
            "reconciled_at": self._reconciled_at,
            "in_doubt_at_restart": self._in_doubt,
            "process_id": os.getpid(),
            "protocol": PROTOCOL,
            "num_gpus": state.pool.num_gpus,
            "gpus_per_node": state.pool.gpus_per_node,
            "resize_timeout_s": self._service.resize_timeout_s,
            "policy": self._service.policy.name,
            "operator_credential": self._service.leases.has_operator,
            "draining": self._service.draining,
            "node_id": ray.get_runtime_context().get_node_id(),
            "started_at": self._started_at,
            "pipelines": sorted(state.pipelines),
        }

    async def snapshot(self) -> dict[str, Any]:
        snap = self._service.snapshot()
        snap["progress_reports"] = dict(self._progress_reports)
        snap["reaped"] = dict(self._reaped)
        snap["scheduler"] = {
            "protocol": PROTOCOL,
            "node_id": ray.get_runtime_context().get_node_id(),
            # The WorkerId label of this scheduler's series on Ray's metrics endpoint.
            "worker_id": ray.get_runtime_context().get_worker_id(),
            "uptime_s": round(time.time() - self._started_at, 3),
            "resize_timeout_s": self._service.resize_timeout_s,
            "epoch": self._service.epoch,
            "recovering": sorted(self._service.unreconciled),
            "persistence": self._service.persistence(),
            "restarted_at": self._restarted_at,
        }
        return snap

    async def diagnostic(self, headline: str = "") -> str:
        return self._service.diagnostic(headline)

    async def decisions(self) -> list[dict[str, Any]]:
        """The committed scheduling cycles, oldest first (at most :data:`DECISIONS_KEPT`): per
        cycle, each pipeline's awake generation DP ranks afterwards and what the cycle woke and
        put to sleep, its DP size, the open demand, and the GPUs of every other stage's grant. What
        tests and operators read to see which grants were partial."""
        return list(self._decisions)

    async def events(
        self, since: int = 0, pipeline: str | None = None, limit: int = 1000, wait_s: float = 0.0
    ) -> dict[str, Any]:
        """Decisions numbered above ``since`` (of ``pipeline`` if given), oldest first, at most
        ``limit``; with ``wait_s``, waits up to that long (at most :data:`EVENTS_WAIT_MAX_S`) for
        one when there is none yet. Returns ``{"decisions": [...], "last": newest number,
        "first": oldest kept number}`` (a follower that fell behind ``first`` lost the ones
        between).

        :raises InvalidRequestError: a negative ``since``, a ``limit`` below 1 or a negative
            ``wait_s``.
        """
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            raise InvalidRequestError(f"since must be an int >= 0, got {since!r}")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidRequestError(f"limit must be an int >= 1, got {limit!r}")
        if not isinstance(wait_s, (int, float)) or isinstance(wait_s, bool) or not wait_s >= 0:
            raise InvalidRequestError(f"wait_s must be a number >= 0, got {wait_s!r}")
        log = self._journal.log
        deadline = time.monotonic() + min(float(wait_s), EVENTS_WAIT_MAX_S)
        found = log.since(since, pipeline, limit)
        while not found and time.monotonic() < deadline:
            if self._new_decision is None:
                self._new_decision = asyncio.Event()
            self._new_decision.clear()
            try:
                await asyncio.wait_for(self._new_decision.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            found = log.since(since, pipeline, limit)
        return {"decisions": [d.to_json() for d in found], "last": log.last_seq, "first": log.first_seq}

    async def ping(self) -> str:
        return "ok"

    # -- plumbing -----------------------------------------------------------------------------------

    def _record_decision(self, event: str, service: SchedulerService) -> None:
        if event != "commit":
            return
        state = service.state
        awake = {pid: sorted(alloc.active) for pid, alloc in sorted(state.generation.items())}
        before = self._decisions[-1]["awake"] if self._decisions else {}
        self._decisions.append(
            {
                "cycle": service.cycles,
                "t": time.time(),
                "awake": awake,
                "woke": _gained(before, awake),
                "slept": _gained(awake, before),
                "dp_size": {pid: spec.dp_size for pid, spec in sorted(state.pipelines.items())},
                "open_demand": dict(sorted(state.open_demand.items())),
                "fixed": {cid: list(alloc.gpus) for cid, alloc in sorted(state.fixed.items())},
            }
        )

    def _wake_followers(self, decision: Any) -> None:
        if self._new_decision is not None:
            self._new_decision.set()

    async def _refresh_gauges(self) -> None:
        """Every :data:`GAUGE_PERIOD_S`, set the gauges from the snapshot (Ray samples them)."""
        self._metrics.set_gauges({metric.START_TIME.name: {(): self._started_at}})
        while True:
            try:
                self._metrics.set_gauges(snapshot_gauges(self._service.snapshot()))
            except Exception:  # metrics must never stop the scheduler
                log.exception("refreshing the scheduler's gauges failed")
            await asyncio.sleep(GAUGE_PERIOD_S)

    def _in_order(self, sender: str, pipeline_id: str, seq: int) -> bool:
        key = (sender, pipeline_id)
        if seq <= self._last_seq.get(key, -1):
            return False
        self._last_seq[key] = seq
        return True

    async def _start(self) -> None:
        """Start the service, the liveness check and, after a restart, the reconciliation (every
        entry point calls this: whichever call comes first after a restart starts them)."""
        await self._service.start()
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._check_liveness(), name="rlix-liveness")
        if self._resuming is None and self._restored:
            self._resuming = asyncio.get_running_loop().create_task(self._reconcile_all(), name="rlix-reconcile")
        if self._gauges is None:
            self._gauges = asyncio.get_running_loop().create_task(self._refresh_gauges(), name="rlix-gauges")

    def _resizer(self, pipeline_id: str, coordinator: Any, resize_token: str) -> Any:
        """The service's resizer for one pipeline: a call on its coordinator. The service bounds
        it with ``resize_timeout_s`` and runs the pipelines' resizes concurrently."""

        epoch = self._service.epoch or 0

        async def resize(pid: str, remove: tuple[int, ...], add: tuple[int, ...]) -> tuple[int, ...] | None:
            ref = coordinator.resize.remote(resize_token, pid, remove, add, epoch=epoch)
            try:
                return await ref
            except asyncio.CancelledError:
                cancel_quietly(ref)  # the per-call timeout fired: do not leave it queued there
                raise
            except RayActorError as exc:
                raise RuntimeError(f"the coordinator of pipeline {pid!r} is gone: {exc}") from None
            except RayTaskError as exc:
                raise RuntimeError(str(getattr(exc, "cause", None) or exc)) from None

        return resize

    async def _answers(self, coordinator: Any) -> bool:
        try:
            await asyncio.wait_for(coordinator.ping.remote(), PING_TIMEOUT_S)
        except RayActorError:
            return False
        except asyncio.TimeoutError:
            return True  # alive but busy: not ours to reap
        return True

    def _follow(self, pipeline_id: str, coordinator: Any) -> None:
        """Send the pipeline's resizes to ``coordinator`` and watch it (once per coordinator)."""
        if self._coordinators.get(pipeline_id) == coordinator and pipeline_id in self._watches:
            return
        previous = self._watches.pop(pipeline_id, None)
        if previous is not None:
            previous.cancel()
        self._coordinators[pipeline_id] = coordinator
        self._watches[pipeline_id] = asyncio.get_running_loop().create_task(
            self._watch(pipeline_id, coordinator), name=f"rlix-watch-{pipeline_id}"
        )

    async def _reconcile_all(self) -> None:
        """After a restart: find each restored pipeline's coordinator (by name, in the pipeline's
        own namespace) and ask it to reconcile; unregister the pipelines whose coordinator is
        gone; fence those that have not reattached when the time is up."""
        epoch = self._service.epoch or 0
        for pipeline_id in self._restored:
            if pipeline_id not in self._service.unreconciled:
                continue  # reattached already (a retried registration)
            coordinator = await asyncio.to_thread(_coordinator_of, pipeline_id)
            try:
                if coordinator is None:
                    raise LookupError("not found")
                self._coordinators[pipeline_id] = coordinator
                await asyncio.wait_for(coordinator.reconcile.remote(epoch), PING_TIMEOUT_S * 5)
            except (LookupError, RayActorError, asyncio.TimeoutError) as exc:
                why = f"its coordinator is gone after a scheduler restart ({type(exc).__name__}: {exc})"
                log.warning("unregistering pipeline %s: %s", pipeline_id, why)
                self._coordinators.pop(pipeline_id, None)
                self._reaped[pipeline_id] = why
                self._service.reap(pipeline_id, why)
                continue
            self._follow(pipeline_id, coordinator)
        deadline = time.monotonic() + self._reconcile_timeout_s
        while self._service.recovering and time.monotonic() < deadline:
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if self._service.recovering:
            self._service.expire_unreconciled(
                f"did not reattach within {self._reconcile_timeout_s:g}s of a scheduler restart"
            )

    async def _watch(self, pipeline_id: str, coordinator: Any) -> None:
        """Unregister the pipeline when its coordinator dies (its process exited or was killed)."""
        try:
            if await coordinator.watch.remote(self._service.epoch or 0) == SUPERSEDED:
                return  # a newer scheduler watches it now
        except asyncio.CancelledError:
            raise
        except RayActorError as exc:
            if self._coordinators.get(pipeline_id) == coordinator:
                await self._reap(pipeline_id, coordinator, f"its coordinator died ({type(exc).__name__})")
        except Exception:
            log.exception("death watch of pipeline %s failed; it will not be reaped automatically", pipeline_id)

    async def _check_liveness(self) -> None:
        """Fence a pipeline whose process is alive but has not polled its coordinator for
        ``liveness_timeout_s`` (stopped, or stuck holding the GIL): its engines cannot be resized.
        The service's grace then reclaims its GPUs. A long pause of the pipeline's own work (a
        checkpoint) does not count: the polls come from a thread of their own."""
        interval = max(1.0, self._liveness_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            for pipeline_id, coordinator in list(self._coordinators.items()):
                if pipeline_id in self._service.state.fenced:
                    continue
                try:
                    quiet = await asyncio.wait_for(coordinator.quiet_for.remote(), PING_TIMEOUT_S)
                except (asyncio.TimeoutError, RayActorError, RayTaskError):
                    continue  # the death watch handles a dead coordinator; a slow one is not proof
                if quiet > self._liveness_timeout_s:
                    self._service.fence_pipeline(
                        pipeline_id, f"unresponsive: its process has not polled for resizes for {quiet:.0f}s"
                    )

    async def _stop_pipeline(self, pipeline_id: str, reason: str) -> None:
        """The kill path of a pipeline whose grace ran out: close its coordinator (its process
        learns it is gone) and kill the named actors in its namespace (the framework's engines
        when they are actors), so that nothing keeps using GPUs that go back to the pool."""
        coordinator = self._coordinators.get(pipeline_id)
        if coordinator is not None:
            try:
                await asyncio.wait_for(coordinator.close.remote(reason), PING_TIMEOUT_S)
            except Exception:  # already dead or stuck: killed below either way
                pass
        killed = await kill_namespace(pipeline_id)
        log.warning("pipeline %s: killed %s (%s)", pipeline_id, killed or "nothing", reason)
        self._forget(pipeline_id)

    async def _reap(self, pipeline_id: str, coordinator: Any, reason: str) -> None:
        if self._coordinators.get(pipeline_id) != coordinator:
            return
        log.warning("unregistering pipeline %s: %s", pipeline_id, reason)
        self._forget(pipeline_id, cancel_watch=False)
        self._reaped[pipeline_id] = reason
        self._service.reap(pipeline_id, reason)

    def _forget(self, pipeline_id: str, cancel_watch: bool = True) -> None:
        self._coordinators.pop(pipeline_id, None)
        self._registrations.pop(pipeline_id, None)
        watch = self._watches.pop(pipeline_id, None)
        if watch is not None and cancel_watch and watch is not asyncio.current_task():
            watch.cancel()
        for key in [k for k in self._last_seq if k[1] == pipeline_id]:
            del self._last_seq[key]
        self._progress_reports.pop(pipeline_id, None)


def _resume(handle: Any, started: Any) -> None:
    """Call ``handle.resume`` until ``started()`` says it ran (at most a minute)."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        handle.resume.remote()
        for _ in range(20):
            if started():
                return
            time.sleep(0.05)
    log.error("the restarted scheduler could not start its reconciliation; the first call will")


def _key(request_id: object) -> str | None:
    """An idempotency key as the service takes it: a short string, or none."""
    if request_id is None:
        return None
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 128:
        raise InvalidRequestError(f"request_id must be a string of 1-128 characters, got {request_id!r:.80}")
    return request_id


def _coordinator_of(pipeline_id: str) -> Any:
    """The coordinator of ``pipeline_id`` (a name in the pipeline's own namespace), or None."""
    try:
        return ray.get_actor(COORDINATOR_NAME, namespace=pipeline_namespace(pipeline_id))
    except ValueError:
        return None


def _count_start() -> int:
    """Count this scheduler's start on the cluster; returns how many started before it."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put

    try:
        before = int(_internal_kv_get(STARTS_KEY, namespace=NAMESPACE) or 0)
        _internal_kv_put(STARTS_KEY, str(before + 1).encode(), overwrite=True, namespace=NAMESPACE)
    except Exception:  # the count is for operators; a scheduler starts without it
        log.exception("could not count the scheduler's start")
        return 0
    return before


def _gained(before: Mapping[str, list[int]], after: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """Per pipeline, the ranks in ``after`` that were not in ``before`` (pipelines with none
    left out)."""
    gained = {pid: sorted(set(ranks) - set(before.get(pid, ()))) for pid, ranks in after.items()}
    return {pid: ranks for pid, ranks in gained.items() if ranks}


#: The actor class; :func:`rlix_plugin.ray.client.connect` creates it with ``SCHEDULER_OPTIONS``.
SchedulerActorClass = ray.remote(SchedulerActor)

__all__ = [
    "DECISIONS_KEPT",
    "PING_TIMEOUT_S",
    "RECONCILE_GRACE_S",
    "SCHEDULER_OPTIONS",
    "SchedulerActor",
    "SchedulerActorClass",
]
