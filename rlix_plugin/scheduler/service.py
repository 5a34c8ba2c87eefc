"""The async driver: runs the pure core on one event loop.

Every public coroutine must run on the same loop. State changes from requests, releases and
progress are synchronous (atomic on the loop). One scheduling cycle at a time: plan and validate
(atomic), execute the resizes outside the lock with other calls still served (shrinks first,
concurrently across pipelines, then expands), then reconcile with what changed meanwhile, validate
again, commit and signal the waiters.

The loop is event-driven: requests, releases, progress and resize completions wake it; there is
no poll delay between ``signal_demand`` and the cycle that wakes a worker.

Resize failure policy: **fence the pipeline, keep the others running.** A pipeline whose resize
raised, timed out or returned awake ranks that contradict the plan is fenced: its waiters get
:class:`PipelineGoneError` with the cause, it is left out of planning, and the GPUs its engines may
still occupy stay assigned to it until it unregisters (its framework's ``finally``). Failing the
whole scheduler instead would turn one sick pipeline into an outage of every run on the pool.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ClusterSpec,
    Grant,
    InvalidRequestError,
    PipelineGoneError,
    PlanInvariantError,
    Priority,
    SchedulerTimeoutError,
)

from .planner import Plan, generation_demand, plan_cycle
from .report import diagnostic, snapshot
from .state import SchedulerState
from .topology import PoolTopology, cluster_id
from .validation import validate_plan

log = logging.getLogger("rlix_plugin.scheduler")

#: ``async resize(pipeline_id, dp_ranks_to_remove, dp_ranks_to_add) -> awake ranks | None``
Resizer = Callable[[str, tuple[int, ...], tuple[int, ...]], Awaitable["tuple[int, ...] | None"]]
Listener = Callable[[str, "SchedulerService"], None]

#: Background rebalance threshold: share of remaining work of the least-complete half of the
#: pipelines versus their share of generation GPUs, in fractions.
REBALANCE_DEVIATION = 0.10


def _check_timeout(timeout_s: object) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0 or math.isinf(timeout_s):
        raise InvalidRequestError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
    return float(timeout_s)


class SchedulerService:
    """The scheduler: its state, waiters, resizers and scheduling loop.

    :param pool: The GPU pool.
    :param clock: Monotonic seconds; injected so that tests and benchmarks control time.
    :param resize_timeout_s: Longest a pipeline's resize may take before it is fenced.
    :param durable_demand: Keep the open-demand registry in planning (always, outside tests that
        reproduce the pre-registry race).
    """

    def __init__(
        self,
        pool: PoolTopology,
        *,
        clock: Callable[[], float] = time.monotonic,
        resize_timeout_s: float = 120.0,
        durable_demand: bool = True,
    ) -> None:
        self.state = SchedulerState(pool, clock)
        self.resize_timeout_s = _check_timeout(resize_timeout_s)
        self.durable_demand = durable_demand
        self.cycles = 0
        self.preempt_reports: dict[str, int] = {}
        self._resizers: dict[str, Resizer] = {}
        self._waiters: dict[str, asyncio.Future[Grant]] = {}
        self._release_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._listeners: list[Listener] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: Plan | None = None
        self._closed = False

    # -- lifecycle of the service -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduling loop on the running event loop (idempotent)."""
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="rlix-scheduler")

    async def stop(self) -> None:
        """Stop the loop; every waiter gets an error."""
        self._closed = True
        self._fail_all(PipelineGoneError("the scheduler is shutting down"))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def add_listener(self, listener: Listener) -> None:
        """``listener(event, service)`` after every change (``register``, ``request``,
        ``release``, ``progress``, ``commit``, ``unregister``); for traces and the watchdog."""
        self._listeners.append(listener)

    # -- pipelines --------------------------------------------------------------------------------

    async def register_pipeline(
        self, pipeline_id: str, clusters: Mapping[str, ClusterSpec], resizer: Resizer, *, admit: bool = True
    ) -> None:
        self.state.register(pipeline_id, clusters)
        self._resizers[pipeline_id] = resizer
        if admit:
            self.state.admit(pipeline_id)
        self._changed("register")

    async def admit_pipeline(self, pipeline_id: str) -> None:
        self.state.admit(pipeline_id)
        self._changed("register")

    async def unregister_pipeline(self, pipeline_id: str, reason: str = "unregistered") -> None:
        cancelled = self.state.unregister(pipeline_id)
        self._resizers.pop(pipeline_id, None)
        error = PipelineGoneError(f"pipeline {pipeline_id!r} was unregistered ({reason})")
        for request in cancelled:
            self._resolve(request.cluster_id, error=error)
        for future in self._release_waiters.pop(pipeline_id, []):
            if not future.done():
                future.set_exception(error)
        self._changed("unregister")

    # -- requests ---------------------------------------------------------------------------------

    async def request_gpus(
        self, pipeline_id: str, cluster: str, priority: int, step_target: int | None, timeout_s: float
    ) -> Grant:
        """Block until granted (see :meth:`SchedulerState.request` for the rules)."""
        timeout_s = _check_timeout(timeout_s)
        started = self.state.clock()
        outcome = self.state.request(pipeline_id, cluster, int(priority), step_target)
        self._changed("request")
        if outcome.granted:
            return Grant(pipeline_id, cluster, outcome.gpus, outcome.dp_ranks, True, 0.0)
        return await self._wait_grant(pipeline_id, cluster, timeout_s, started)

    async def signal_demand(self, pipeline_id: str, rollout_id: int, step_target: int, timeout_s: float) -> Grant:
        """Pre-signal a rollout: retire the previous rollout's streams, write the open-demand
        registry and block until at least one generation worker is awake."""
        timeout_s = _check_timeout(timeout_s)
        if pipeline_id in self.state.pipelines and pipeline_id not in self.state.fenced:
            self.state.retire_streams(pipeline_id)
        log.debug("pipeline %s signals demand for rollout %s (%s samples)", pipeline_id, rollout_id, step_target)
        return await self.request_gpus(pipeline_id, ACTOR_INFER, Priority.GENERATION, step_target, timeout_s)

    async def release(self, pipeline_id: str, cluster: str, timeout_s: float = 120.0) -> None:
        """Release a cluster; for the generation cluster, wait until its workers sleep."""
        timeout_s = _check_timeout(timeout_s)
        needs_resize = self.state.release(pipeline_id, cluster)
        self._resolve(cluster_id(pipeline_id, cluster), error=InvalidRequestError(
            f"{cluster_id(pipeline_id, cluster)!r} was released while its request was pending"))
        self._changed("release")
        if needs_resize:
            await self._wait_release(pipeline_id, timeout_s)

    async def release_and_request(
        self,
        pipeline_id: str,
        release_cluster: str,
        cluster: str,
        priority: int,
        step_target: int | None,
        timeout_s: float,
    ) -> Grant:
        """Release one cluster and request another with no scheduling cycle in between."""
        timeout_s = _check_timeout(timeout_s)
        started = self.state.clock()
        if release_cluster == cluster:
            raise InvalidRequestError(f"release_and_request of {cluster!r} for itself; use request_gpus")
        # Validate both halves first: a bad call must not leave the cluster released.
        self.state.check_request(pipeline_id, cluster, int(priority), step_target)
        self.state._cluster(self.state.pipelines[pipeline_id], release_cluster)
        needs_resize = self.state.release(pipeline_id, release_cluster)
        outcome = self.state.request(pipeline_id, cluster, int(priority), step_target)
        self._changed("request")
        if needs_resize:
            await self._wait_release(pipeline_id, timeout_s)
        if outcome.granted:
            return Grant(pipeline_id, cluster, outcome.gpus, outcome.dp_ranks, True, 0.0)
        remaining = max(0.001, timeout_s - (self.state.clock() - started))
        return await self._wait_grant(pipeline_id, cluster, remaining, started)

    async def planned_release(self, pipeline_id: str, dp_ranks: Iterable[int], timeout_s: float) -> None:
        """Give specific generation workers back and wait until they sleep."""
        timeout_s = _check_timeout(timeout_s)
        if self.state.plan_release(pipeline_id, dp_ranks):
            self._changed("release")
            await self._wait_release(pipeline_id, timeout_s)

    # -- progress ---------------------------------------------------------------------------------

    def report_progress(
        self,
        pipeline_id: str,
        mode: str,
        adapter_id: str | None,
        step_target: int,
        completed: int,
        target_weight_version: int = 0,
        new_batch: bool = False,
    ) -> None:
        self.state.report_progress(
            pipeline_id, mode, adapter_id, step_target, completed, target_weight_version, new_batch
        )
        self._changed("progress")

    def clear_progress(self, pipeline_id: str, mode: str | None = None, adapter_id: str | None = None) -> None:
        self.state.clear_progress(pipeline_id, mode, adapter_id)
        self._changed("progress")

    def report_preempt(self, pipeline_id: str, dp_rank: int, retracted: int) -> None:
        self.preempt_reports[pipeline_id] = self.preempt_reports.get(pipeline_id, 0) + 1

    # -- reading ----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.state, {
            "cycles": self.cycles,
            "resizing": self._in_flight is not None,
            "preempt_reports": dict(self.preempt_reports),
        })

    def diagnostic(self, headline: str = "") -> str:
        return diagnostic(self.state, headline)

    # -- waiting ----------------------------------------------------------------------------------

    async def _wait_grant(self, pipeline_id: str, cluster: str, timeout_s: float, started: float) -> Grant:
        cid = cluster_id(pipeline_id, cluster)
        future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._waiters[cid] = future
        self._kick()
        try:
            grant = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except asyncio.TimeoutError:
            if future.done() and future.exception() is None:
                grant = future.result()
            else:
                # The diagnostic is taken before the request is withdrawn, so it shows it waiting.
                report = self.diagnostic("scheduler state at the timeout:")
                self._waiters.pop(cid, None)
                self.state.cancel_request(pipeline_id, cluster)
                self._changed("request")
                raise SchedulerTimeoutError(f"{cid} was not granted within {timeout_s:.1f}s", report) from None
        except asyncio.CancelledError:
            self._waiters.pop(cid, None)
            self.state.cancel_request(pipeline_id, cluster)
            raise
        return Grant(grant.pipeline_id, grant.cluster, grant.gpus, grant.dp_ranks, True,
                     round(self.state.clock() - started, 6))

    async def _wait_release(self, pipeline_id: str, timeout_s: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._release_waiters.setdefault(pipeline_id, []).append(future)
        self._kick()
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except asyncio.TimeoutError:
            raise SchedulerTimeoutError(
                f"release of {pipeline_id!r} generation workers not done within {timeout_s:.1f}s",
                self.diagnostic("scheduler state at the timeout:"),
            ) from None

    def _resolve(self, cid: str, grant: Grant | None = None, error: BaseException | None = None) -> None:
        future = self._waiters.pop(cid, None)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(grant)  # type: ignore[arg-type]

    def _fail_all(self, error: BaseException) -> None:
        for cid in list(self._waiters):
            self._resolve(cid, error=error)
        for futures in self._release_waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._release_waiters.clear()

    # -- the loop ---------------------------------------------------------------------------------

    def _changed(self, event: str) -> None:
        self._kick()
        for listener in self._listeners:
            try:
                listener(event, self)
            except Exception:  # a broken observer must not break scheduling
                log.exception("scheduler listener failed on %s", event)

    def _kick(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def needs_cycle(self) -> bool:
        """Plan when a request or release waits; otherwise only when a rebalance is warranted: a
        suspended generation cluster with demand, idle GPUs a pipeline with demand could use, or
        the least-complete half of the pipelines off its share by more than 10 points."""
        state = self.state
        if state.pending or state.planned_releases:
            return True
        demand = generation_demand(state, self.durable_demand)
        if not demand:
            return False
        # A suspended generation cluster (held, no worker awake) with remaining demand.
        if any(not state.generation[pid].active for pid in demand):
            return True
        # Idle GPUs a pipeline with demand could generate on (a training stage just released
        # them): leaving them idle mid-rollout is the waste sharing exists to remove.
        if self._idle_bundle_for(demand):
            return True
        return self._share_deviation(demand) > REBALANCE_DEVIATION

    def _idle_bundle_for(self, demand: dict[str, int]) -> bool:
        state = self.state
        owner = state.owner
        idle = [gpu for gpu, holder in enumerate(owner) if holder is None]
        if not idle:
            return False
        for pid in demand:
            spec = state.pipelines[pid]
            for gpu in idle:
                rank = spec.rank_of_gpu.get(gpu)
                if rank is not None and all(owner[g] is None for g in spec.bundles[rank]):
                    return True
        return False

    def _share_deviation(self, demand: dict[str, int]) -> float:
        """|remaining-work share - GPU share| of the least-complete half of the pipelines."""
        state = self.state
        pipelines = state.pipelines
        weights = {pid: demand[pid] * pipelines[pid].tp for pid in demand}
        gpus = {pid: len(state.generation[pid].active) * pipelines[pid].tp for pid in demand}
        total_weight, total_gpus = sum(weights.values()), sum(gpus.values())
        if not total_weight or not total_gpus:
            return 0.0

        def completion(pid: str) -> float:
            streams = state.progress.get(pid)
            target = sum(s.step_target for s in streams.values()) if streams else state.open_demand.get(pid, 1)
            return 1.0 - demand[pid] / max(target, 1)

        half = sorted(demand, key=lambda p: (completion(p), p))[: max(1, len(demand) // 2)]
        return abs(sum(weights[p] for p in half) / total_weight - sum(gpus[p] for p in half) / total_gpus)

    async def _loop(self) -> None:
        assert self._wakeup is not None
        while not self._closed:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                while self.needs_cycle():
                    if not await self._cycle():
                        break
            except Exception as exc:  # keep serving; every waiter learns what broke
                log.exception("scheduling cycle failed")
                self._fail_all(exc if isinstance(exc, PlanInvariantError) else PlanInvariantError(repr(exc)))

    async def _cycle(self) -> bool:
        """One cycle. Returns False when there was nothing to do."""
        state = self.state
        plan = plan_cycle(state, durable_demand=self.durable_demand)
        if plan.is_empty():
            return False
        try:
            validate_plan(state, plan)
        except PlanInvariantError as exc:
            log.error("%s", exc)
            self._fail_all(exc)
            return False
        self._in_flight = plan
        failures: dict[str, str] = {}
        try:
            await self._resize_all(plan.shrinks, add=False, failures=failures)
            self._reconcile(plan, failures)
            await self._resize_all(plan.expands, add=True, failures=failures)
            self._reconcile_gone(plan)
            validate_plan(state, plan, executed=True)
        except PlanInvariantError as exc:
            log.error("%s", exc)
            self._fail_all(exc)
            return False
        finally:
            self._in_flight = None
        satisfied = state.apply(plan)
        self.cycles += 1
        for pid, reason in failures.items():
            self._fence(pid, reason)
        for request in satisfied:
            if request.pipeline_id in failures:
                self._resolve(request.cluster_id, error=PipelineGoneError(
                    f"pipeline {request.pipeline_id!r} is fenced: {failures[request.pipeline_id]}"))
                continue
            if request.cluster == ACTOR_INFER:
                gpus, ranks = state.gen_grant(request.pipeline_id)
            else:
                gpus, ranks = state.fixed_gpus(request.pipeline_id, request.cluster), ()
            self._resolve(request.cluster_id, Grant(request.pipeline_id, request.cluster, gpus, ranks, True))
        for pid in list(self._release_waiters):
            if pid not in state.planned_releases:
                for future in self._release_waiters.pop(pid):
                    if not future.done():
                        future.set_result(None)
        self._changed("commit")
        return True

    async def _resize_all(self, changes: dict[str, set[int]], add: bool, failures: dict[str, str]) -> None:
        calls = {pid: ranks for pid, ranks in changes.items() if ranks and pid in self._resizers and pid not in failures}
        if not calls:
            return
        results = await asyncio.gather(
            *(self._resize_one(pid, tuple(sorted(ranks)), add) for pid, ranks in calls.items()),
            return_exceptions=True,
        )
        for pid, result in zip(calls, results):
            if isinstance(result, BaseException):
                if pid not in self.state.pipelines:
                    continue  # unregistered while its resize was in flight: nothing left to fence
                failures[pid] = f"{'wake' if add else 'sleep'} of DP ranks {sorted(calls[pid])} failed: {result!r}"
                log.error("pipeline %s: %s; fencing it", pid, failures[pid])

    async def _resize_one(self, pid: str, ranks: tuple[int, ...], add: bool) -> None:
        resizer = self._resizers[pid]
        remove, wake = ((), ranks) if add else (ranks, ())
        try:
            awake = await asyncio.wait_for(resizer(pid, remove, wake), self.resize_timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"resize took longer than {self.resize_timeout_s:.1f}s") from None
        if awake is None:
            raise RuntimeError(
                f"no rlix_resize_infer implementation answered for pipeline {pid!r}: "
                "the framework's hooks were never installed"
            )
        awake_set = set(awake)
        if add and not set(ranks) <= awake_set:
            raise RuntimeError(f"ranks {sorted(set(ranks) - awake_set)} still asleep after wake (awake: {sorted(awake_set)})")
        if not add and awake_set & set(ranks):
            raise RuntimeError(f"ranks {sorted(awake_set & set(ranks))} still awake after sleep")

    def _reconcile(self, plan: Plan, failures: dict[str, str]) -> None:
        """After the shrinks: drop what a failed shrink or a concurrent change made impossible, so
        that no engine is woken on a GPU that was not freed."""
        state = self.state
        for pid in failures:
            plan.shrinks.pop(pid, None)  # its engines may still hold those GPUs
            plan.expands.pop(pid, None)
        self._reconcile_gone(plan)
        for pid in list(plan.expands):
            release = state.planned_releases.get(pid)
            if release is not None and release.drop_cluster:
                plan.expands.pop(pid)
        owner = list(state.owner)
        for pid, ranks in plan.shrinks.items():
            for rank in ranks:
                for gpu in state.pipelines[pid].bundles[rank]:
                    owner[gpu] = None
        kept = []
        for grant in plan.grants:
            if all(owner[g] is None for g in grant.gpus):
                for gpu in grant.gpus:
                    owner[gpu] = grant.cluster_id
                kept.append(grant)
        plan.grants = kept
        for pid in list(plan.expands):
            bundles = state.pipelines[pid].bundles
            ranks = {r for r in plan.expands[pid] if all(owner[g] is None for g in bundles[r])}
            for rank in ranks:
                for gpu in bundles[rank]:
                    owner[gpu] = (pid, rank)
            if ranks:
                plan.expands[pid] = ranks
            else:
                del plan.expands[pid]

    def _reconcile_gone(self, plan: Plan) -> None:
        """Drop plan items of pipelines that unregistered, and grants whose request is gone."""
        state = self.state
        for changes in (plan.shrinks, plan.expands):
            for pid in [p for p in changes if p not in state.generation]:
                del changes[pid]
            for pid, ranks in changes.items():
                if changes is plan.shrinks:
                    ranks &= state.generation[pid].active
        plan.grants = [g for g in plan.grants if g.cluster_id in state.pending]

    def _fence(self, pid: str, reason: str) -> None:
        cancelled = self.state.fence(pid, reason)
        error = PipelineGoneError(f"pipeline {pid!r} is fenced: {reason}")
        for request in cancelled:
            self._resolve(request.cluster_id, error=error)
        for future in self._release_waiters.pop(pid, []):
            if not future.done():
                future.set_exception(error)


__all__ = ["REBALANCE_DEVIATION", "Resizer", "SchedulerService"]
