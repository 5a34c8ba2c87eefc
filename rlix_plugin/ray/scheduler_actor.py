"""The scheduler as a Ray actor: ``rlix:scheduler`` in namespace ``rlix``.

It hosts a :class:`~rlix_plugin.scheduler.service.SchedulerService` on the actor's event loop and
adds only what being remote needs:

* resizes go to each pipeline's coordinator actor (:mod:`.coordinator`), concurrently across
  pipelines, each bounded by the service's ``resize_timeout_s``; a coordinator that fails or
  times out gets the service's policy: that pipeline is fenced, the others keep running;
* a death watch per coordinator: when a pipeline's process dies (and its coordinator with it) the
  pipeline is unregistered and its GPUs go back to the pool, so a crashed run leaves nothing
  behind (failure mode 10);
* progress arrives fire-and-forget from many processes, and Ray does not promise that an async
  actor runs one sender's calls in order; every report carries its sender's sequence number and
  an older one than already applied is dropped (reports are absolute: latest wins).

It never calls the orchestrator: requests, progress, releases, resizes and reaping use only the
service and the coordinators (a static test walks this module to keep it that way), so killing
the orchestrator leaves running pipelines unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from rlix_plugin.hookspecs import ClusterSpec, Grant, RlixError, SwitchCosts
from rlix_plugin.scheduler.policy import DEFAULT_POLICY
from rlix_plugin.scheduler.service import SchedulerService
from rlix_plugin.scheduler.topology import PoolTopology

from .calls import cancel_quietly
from .names import HEAD_NODE_RESOURCE, PROTOCOL

log = logging.getLogger("rlix_plugin.ray.scheduler")

#: Seconds the scheduler waits for an old coordinator to answer a ping before deciding, on
#: re-registration of the same pipeline id, that it belongs to a dead run.
PING_TIMEOUT_S = 2.0

#: Committed scheduling decisions kept for :meth:`SchedulerActor.decisions` (oldest dropped first).
DECISIONS_KEPT = 4096

#: Options of the scheduler actor. Why each value:
SCHEDULER_OPTIONS: dict[str, Any] = {
    # Its state (allocations, open demand, waiters) lives only in memory. A restart would come
    # back empty while pipelines still hold GPUs and wait on futures that no longer exist, and
    # nothing would tell them (failure mode 13). Not restarting makes every caller get
    # SchedulerUnavailableError at once instead.
    "max_restarts": 0,
    # A retried request or release could be applied twice; the caller gets the error and decides.
    "max_task_retries": 0,
    # Every blocked request_gpus / signal_demand / release holds one slot (a coroutine on the one
    # event loop, not a thread) for its whole wait. Progress, status and new requests must never
    # queue behind those waits or behind a long resize (failure mode 12), so the limit sits far
    # above the worst case: 256 pipelines x (4 clusters + 1 release) = 1280 blocked calls.
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

    def __init__(self, num_gpus: int, gpus_per_node: int, resize_timeout_s: float = 120.0,
                 policy: str = DEFAULT_POLICY) -> None:
        self._service = SchedulerService(
            PoolTopology(num_gpus, gpus_per_node), resize_timeout_s=resize_timeout_s, policy=policy
        )
        self._coordinators: dict[str, Any] = {}
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._last_seq: dict[tuple[str, str], int] = {}
        self._progress_reports: dict[str, int] = {}
        self._reaped: dict[str, str] = {}
        self._started_at = time.time()
        self._decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_KEPT)
        self._service.add_listener(self._record_decision)

    # -- pipelines ----------------------------------------------------------------------------------

    async def register_pipeline(
        self, pipeline_id: str, clusters: Mapping[str, ClusterSpec], coordinator: Any, admit: bool = True,
        switch_costs: SwitchCosts | None = None,
    ) -> None:
        """Register a pipeline whose resizes go to ``coordinator``. A pipeline id still held by a
        run whose coordinator is dead is reaped first; one whose coordinator answers is refused
        by the service (``InvalidRequestError``). Registering the same pipeline with the same
        coordinator again is a no-op, so a retried registration is safe."""
        await self._service.start()
        old = self._coordinators.get(pipeline_id)
        if old is not None and old == coordinator:
            # The same registration again (a caller retrying through a new orchestrator).
            if admit:
                await self._service.admit_pipeline(pipeline_id)
            return
        if old is not None and not await self._answers(old):
            await self._reap(pipeline_id, old, "re-registered while its previous coordinator is dead")
        await self._service.register_pipeline(
            pipeline_id, clusters, self._resizer(pipeline_id, coordinator), admit=admit, switch_costs=switch_costs
        )
        self._coordinators[pipeline_id] = coordinator
        self._reaped.pop(pipeline_id, None)
        self._watches[pipeline_id] = asyncio.get_running_loop().create_task(
            self._watch(pipeline_id, coordinator), name=f"rlix-watch-{pipeline_id}"
        )

    async def admit_pipeline(self, pipeline_id: str) -> None:
        await self._service.admit_pipeline(pipeline_id)

    async def unregister_pipeline(self, pipeline_id: str, reason: str) -> None:
        self._forget(pipeline_id)
        await self._service.unregister_pipeline(pipeline_id, reason)

    async def is_registered(self, pipeline_id: str) -> bool:
        return pipeline_id in self._service.state.pipelines

    # -- requests and releases --------------------------------------------------------------------

    async def request_gpus(
        self, pipeline_id: str, cluster: str, priority: int, step_target: int | None, timeout_s: float
    ) -> Grant:
        return await self._service.request_gpus(pipeline_id, cluster, priority, step_target, timeout_s)

    async def signal_demand(self, pipeline_id: str, rollout_id: int, step_target: int, timeout_s: float) -> Grant:
        return await self._service.signal_demand(pipeline_id, rollout_id, step_target, timeout_s)

    async def release(self, pipeline_id: str, cluster: str, timeout_s: float) -> None:
        await self._service.release(pipeline_id, cluster, timeout_s)

    async def release_and_request(
        self, pipeline_id: str, release_cluster: str, cluster: str, priority: int, step_target: int | None,
        timeout_s: float,
    ) -> Grant:
        return await self._service.release_and_request(
            pipeline_id, release_cluster, cluster, priority, step_target, timeout_s
        )

    async def planned_release(self, pipeline_id: str, dp_ranks: Iterable[int], timeout_s: float) -> None:
        await self._service.planned_release(pipeline_id, tuple(dp_ranks), timeout_s)

    # -- progress (fire-and-forget from the pipelines) ----------------------------------------------

    async def report_progress(
        self, sender: str, seq: int, pipeline_id: str, mode: str, adapter_id: str | None, step_target: int,
        completed: int, target_weight_version: int, new_batch: bool = False,
    ) -> str | None:
        """Apply one coalesced report. Returns ``None``, or why it was dropped: the sender checks
        the answer later and logs "progress signal lost" (an exception here would only surface
        as an unhandled-error log line in a process that never reads it)."""
        if not self._in_order(sender, pipeline_id, seq):
            return None  # a newer report of this sender was applied already; latest wins
        try:
            self._service.report_progress(
                pipeline_id, mode, adapter_id, step_target, completed, target_weight_version, new_batch
            )
        except RlixError as exc:
            return f"{type(exc).__name__}: {exc}"
        self._progress_reports[pipeline_id] = self._progress_reports.get(pipeline_id, 0) + 1
        return None

    async def clear_progress(
        self, sender: str, seq: int, pipeline_id: str, mode: str | None, adapter_id: str | None
    ) -> str | None:
        """Close a stream (the final count was reported first). Same answer as report_progress."""
        if not self._in_order(sender, pipeline_id, seq):
            return None
        try:
            self._service.clear_progress(pipeline_id, mode, adapter_id)
        except RlixError as exc:
            return f"{type(exc).__name__}: {exc}"
        self._progress_reports[pipeline_id] = self._progress_reports.get(pipeline_id, 0) + 1
        return None

    async def report_preempt(self, pipeline_id: str, dp_rank: int, retracted: int) -> None:
        self._service.report_preempt(pipeline_id, dp_rank, retracted)

    # -- reading ------------------------------------------------------------------------------------

    async def describe(self) -> dict[str, Any]:
        """Who this scheduler is: protocol, pool, options, where it runs, what it serves."""
        await self._service.start()
        state = self._service.state
        return {
            "protocol": PROTOCOL,
            "num_gpus": state.pool.num_gpus,
            "gpus_per_node": state.pool.gpus_per_node,
            "resize_timeout_s": self._service.resize_timeout_s,
            "policy": self._service.policy.name,
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
            "uptime_s": round(time.time() - self._started_at, 3),
            "resize_timeout_s": self._service.resize_timeout_s,
        }
        return snap

    async def diagnostic(self, headline: str = "") -> str:
        return self._service.diagnostic(headline)

    async def decisions(self) -> list[dict[str, Any]]:
        """The committed scheduling cycles, oldest first (at most :data:`DECISIONS_KEPT`): per
        cycle, each pipeline's awake generation DP ranks afterwards and what the cycle woke and
        put to sleep, its DP size, the open demand, and the GPUs of every other stage's grant. What tests and operators read to see
        which grants were partial."""
        return list(self._decisions)

    async def ping(self) -> str:
        return "ok"

    # -- plumbing -----------------------------------------------------------------------------------

    def _record_decision(self, event: str, service: SchedulerService) -> None:
        if event != "commit":
            return
        state = service.state
        awake = {pid: sorted(alloc.active) for pid, alloc in sorted(state.generation.items())}
        before = self._decisions[-1]["awake"] if self._decisions else {}
        self._decisions.append({
            "cycle": service.cycles,
            "t": time.time(),
            "awake": awake,
            "woke": _gained(before, awake),
            "slept": _gained(awake, before),
            "dp_size": {pid: spec.dp_size for pid, spec in sorted(state.pipelines.items())},
            "open_demand": dict(sorted(state.open_demand.items())),
            "fixed": {cid: list(alloc.gpus) for cid, alloc in sorted(state.fixed.items())},
        })

    def _in_order(self, sender: str, pipeline_id: str, seq: int) -> bool:
        key = (sender, pipeline_id)
        if seq <= self._last_seq.get(key, -1):
            return False
        self._last_seq[key] = seq
        return True

    def _resizer(self, pipeline_id: str, coordinator: Any) -> Any:
        """The service's resizer for one pipeline: a call on its coordinator. The service bounds
        it with ``resize_timeout_s`` and runs the pipelines' resizes concurrently."""

        async def resize(pid: str, remove: tuple[int, ...], add: tuple[int, ...]) -> tuple[int, ...] | None:
            ref = coordinator.resize.remote(pid, remove, add)
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

    async def _watch(self, pipeline_id: str, coordinator: Any) -> None:
        """Unregister the pipeline when its coordinator dies (its process exited or was killed)."""
        try:
            await coordinator.watch.remote()
        except asyncio.CancelledError:
            raise
        except RayActorError as exc:
            if self._coordinators.get(pipeline_id) == coordinator:
                await self._reap(pipeline_id, coordinator, f"its coordinator died ({type(exc).__name__})")
        except Exception:
            log.exception("death watch of pipeline %s failed; it will not be reaped automatically", pipeline_id)

    async def _reap(self, pipeline_id: str, coordinator: Any, reason: str) -> None:
        if self._coordinators.get(pipeline_id) != coordinator:
            return
        log.warning("unregistering pipeline %s: %s", pipeline_id, reason)
        self._forget(pipeline_id, cancel_watch=False)
        self._reaped[pipeline_id] = reason
        await self._service.unregister_pipeline(pipeline_id, reason)

    def _forget(self, pipeline_id: str, cancel_watch: bool = True) -> None:
        self._coordinators.pop(pipeline_id, None)
        watch = self._watches.pop(pipeline_id, None)
        if watch is not None and cancel_watch and watch is not asyncio.current_task():
            watch.cancel()
        for key in [k for k in self._last_seq if k[1] == pipeline_id]:
            del self._last_seq[key]
        self._progress_reports.pop(pipeline_id, None)


def _gained(before: Mapping[str, list[int]], after: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """Per pipeline, the ranks in ``after`` that were not in ``before`` (pipelines with none
    left out)."""
    gained = {pid: sorted(set(ranks) - set(before.get(pid, ()))) for pid, ranks in after.items()}
    return {pid: ranks for pid, ranks in gained.items() if ranks}


#: The actor class; :func:`rlix_plugin.ray.client.connect` creates it with ``SCHEDULER_OPTIONS``.
SchedulerActorClass = ray.remote(SchedulerActor)

__all__ = ["DECISIONS_KEPT", "PING_TIMEOUT_S", "SCHEDULER_OPTIONS", "SchedulerActor", "SchedulerActorClass"]
