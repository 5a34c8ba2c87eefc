"""The async driver: runs the pure core on one event loop and answers the waiters.

Every public coroutine must run on the same loop. State changes from requests, releases and
progress are synchronous (atomic on the loop). A planning pass is synchronous too: it plans,
validates and starts moves (:meth:`SchedulerState.start`), then returns -- it never waits for an
engine. Each resize call of a move runs as its own task through the executor; its outcome is fed
back to the state (:meth:`SchedulerState.resized`), which hands freed GPUs on and says which call
comes next. So a resize in flight for one pipeline delays nothing that does not need the GPUs it
is moving: other requests are granted, other engines preempted or woken, meanwhile.

The loop is event-driven: requests, releases, progress (when the trigger policy says so,
:mod:`.trigger`) and resize outcomes wake it, and so does the next deadline of a switch-cost rule;
there is no poll delay between ``signal_demand`` and the pass that wakes a worker.

Ownership: :meth:`register_pipeline` returns the pipeline's lease (:mod:`.leases`); every call
that changes what a pipeline holds or wants presents it, and a wrong one is refused with
:class:`NotPipelineOwnerError` before anything changes.

Resize failure policy: **fence the pipeline, keep the others running, then reclaim.** A pipeline
whose resize raised, timed out or returned awake ranks that contradict the call is fenced (so is
one a transport finds unresponsive): its waiters get :class:`PipelineGoneError` with the cause, it
is left out of planning, and the GPUs its engines may still occupy stay assigned to it -- for
``fence_grace_s`` (default 30 s), long enough for its framework's ``finally`` to unregister it.
Then the scheduler reclaims it: the transport's ``on_reclaim`` stops what it can of the pipeline
(on Ray, its coordinator and the actors in its namespace), the pipeline is unregistered and its
GPUs go back to the pool. Failing the whole scheduler instead would turn one sick pipeline into an
outage of every run on the pool; keeping its GPUs forever would wedge the pool.

Persistence and restart (with a ``store``): every committed change is saved to the store
(:mod:`.durable`, group commit), and nothing that depends on a change leaves the scheduler --
no answer to a caller, no resize call to an engine -- before it is saved. A service started with
:meth:`restore` from a saved record knows every pipeline, lease digest, allocation, pending
request and open demand, but plans nothing until each restored pipeline has **reattached**
(:meth:`reattach`, with its own report: :mod:`.rehydrate`) or was fenced for not answering
(:meth:`expire_unreconciled`); blocking calls of a pipeline wait for its reattachment (within
their timeout). Blocking calls carry idempotency keys (:mod:`.keys`): a call retried after a
restart returns the grant the first attempt would have returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from rlix_plugin.arguments import timeout as check_timeout
from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ClusterSpec,
    Grant,
    InvalidRequestError,
    PipelineGoneError,
    PipelineLimits,
    PlanInvariantError,
    Priority,
    SchedulerTimeoutError,
    SwitchCosts,
)
from rlix_plugin.progress import ProgressReport

from .core import SchedulerCore
from .demand import IGNORED, RETIRED
from .durable import DurableLog
from .executor import ResizeExecutor, Resizer
from .keys import RequestKeys
from .leases import Leases
from .observe import SchedulerObserver
from .policy import DEFAULT_POLICY, Policy
from .recovery import Recovery
from .rehydrate import settle_unanswered
from .report import diagnostic, snapshot
from .state import Fenced, ReleaseDone, ResizeAction, Satisfied
from .store import StaleWriterError, StateStore
from .topology import PoolTopology, cluster_id
from .trigger import PROGRESS

log = logging.getLogger(__name__)

Listener = Callable[[str, "SchedulerService"], None]

#: Seconds a fenced pipeline keeps its GPUs before the scheduler reclaims them.
FENCE_GRACE_S = 30.0

_check_timeout = check_timeout


class SchedulerService(Recovery):
    """The scheduler: its state, waiters, resizers and scheduling loop.

    :param pool: The GPU pool.
    :param clock: Monotonic seconds; injected so that tests and benchmarks control time.
    :param resize_timeout_s: Longest one resize call may take before its pipeline is fenced.
    :param policy: The sharing policy (:mod:`.policy`), by name or object.
    :param durable_demand: Keep the open-demand registry in planning (always, outside tests that
        reproduce the pre-registry race).
    :param operator_credential: What operator actions must present (None: they are refused), or
        ``operator_digest``, its digest.
    :param fence_grace_s: How long a fenced pipeline keeps its GPUs before they are reclaimed.
    :param on_reclaim: ``on_reclaim(pipeline_id, reason)``, awaited before a fenced pipeline is
        unregistered at the end of its grace: the transport stops what it can of it.
    :param store: Where every committed change is saved (None: nothing is persisted).
    :param epoch: This incarnation's epoch in ``store`` (:meth:`StateStore.claim`).
    :param persist_interval_s: Longest delay before a change nobody waits on (progress) is saved.
    """

    def __init__(
        self,
        pool: PoolTopology,
        *,
        clock: Callable[[], float] = time.monotonic,
        resize_timeout_s: float = 120.0,
        policy: Policy | str = DEFAULT_POLICY,
        durable_demand: bool = True,
        operator_credential: str | None = None,
        operator_digest: str | None = None,
        fence_grace_s: float = FENCE_GRACE_S,
        on_reclaim: Callable[[str, str], Awaitable[None]] | None = None,
        store: StateStore | None = None,
        epoch: int | None = None,
        persist_interval_s: float = 0.05,
    ) -> None:
        self.core = SchedulerCore(pool, clock, policy=policy, durable_demand=durable_demand)
        self.leases = Leases(operator_credential, digest=operator_digest)
        self.fence_grace_s = check_timeout(fence_grace_s, "fence_grace_s")
        self._on_reclaim = on_reclaim
        self._reclaims: dict[str, asyncio.Task[None]] = {}
        #: Pipelines reclaimed after their grace, and why (for operators).
        self.reclaimed: dict[str, str] = {}
        #: No new registrations while draining (an operator action).
        self.draining = False
        self.state = self.core.state
        self.policy = self.core.policy
        self.resize_timeout_s = _check_timeout(resize_timeout_s)
        self.preempt_reports: dict[str, int] = {}
        self._executor = ResizeExecutor(self.resize_timeout_s, clock)
        self._resizers: dict[str, Resizer] = {}
        self._waiters: dict[str, asyncio.Future[Grant]] = {}
        self._release_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._listeners: list[Listener] = []
        self._observers: list[SchedulerObserver] = []
        self._resizes: set[asyncio.Task[None]] = set()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.keys = RequestKeys()
        #: Restored pipelines that have not reattached yet: nothing is planned while there are any.
        self.unreconciled: set[str] = set()
        self._reattached: asyncio.Event | None = None
        #: Parts of the persisted record other than the state and the service's own (a transport's).
        self._record_parts: dict[str, Callable[[], Any]] = {}
        self._durable: DurableLog | None = None
        if store is not None:
            self._durable = DurableLog(
                store,
                epoch if epoch is not None else store.claim(),
                self.record,
                min_interval_s=persist_interval_s,
                on_stale=self._stale,
            )

    @property
    def cycles(self) -> int:
        """Planning passes that started at least one move."""
        return self.core.cycles

    # -- lifecycle of the service -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduling loop on the running event loop (idempotent)."""
        if self._task is None:
            self._wakeup = asyncio.Event()
            if self._durable is not None:
                self._durable.start()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="rlix-scheduler")
            for pipeline_id in self.state.fenced:  # restored fences: their grace starts again
                self._schedule_reclaim(pipeline_id, self.state.fenced[pipeline_id])

    async def stop(self) -> None:
        """Stop the loop and the resizes in flight; every waiter gets an error."""
        self._closed = True
        self._fail_all(PipelineGoneError("the scheduler is shutting down"))
        tasks = [t for t in (self._task, *self._resizes, *self._reclaims.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._task = None
        if self._durable is not None:
            await self._durable.stop()

    def add_listener(self, listener: Listener) -> None:
        """``listener(event, service)`` after every change (``register``, ``request``,
        ``release``, ``progress``, ``commit``, ``unregister``); for traces and the watchdog."""
        self._listeners.append(listener)

    def add_observer(self, observer: SchedulerObserver) -> None:
        """Tell ``observer`` every committed change (:mod:`.observe`): the decision log and the
        metrics are observers."""
        self._observers.append(observer)

    # -- pipelines --------------------------------------------------------------------------------

    async def register_pipeline(
        self,
        pipeline_id: str,
        clusters: Mapping[str, ClusterSpec],
        resizer: Resizer,
        *,
        admit: bool = True,
        switch_costs: SwitchCosts | None = None,
        limits: PipelineLimits | None = None,
    ) -> str:
        """Register (and by default admit) a pipeline; returns its lease."""
        if self.draining:
            raise InvalidRequestError(f"pipeline {pipeline_id!r} not registered: the scheduler is draining")
        self.state.register(pipeline_id, clusters, switch_costs, limits)
        self._resizers[pipeline_id] = resizer
        lease = self.leases.issue(pipeline_id)
        self.reclaimed.pop(pipeline_id, None)
        if admit:
            self.state.admit(pipeline_id)
        self._changed("register")
        await self._flush()
        return lease

    async def admit_pipeline(self, pipeline_id: str, lease: str) -> None:
        self._owner(pipeline_id, lease)
        self.state.admit(pipeline_id)
        self._changed("register")
        await self._flush()

    async def unregister_pipeline(
        self, pipeline_id: str, lease: str | None, reason: str = "unregistered", *, operator: str | None = None
    ) -> None:
        """Remove a pipeline: its lease's holder may, and so may an operator (``operator``).
        Unknown ids are ignored."""
        if pipeline_id not in self.state.pipelines:
            return
        if operator is not None:
            self.leases.check_operator(operator, f"unregistering pipeline {pipeline_id!r}")
        else:
            self.leases.check(pipeline_id, lease)
        self._remove(pipeline_id, reason)
        await self._flush()

    def reap(self, pipeline_id: str, reason: str) -> None:
        """Remove a pipeline whose process the transport saw die (no lease: nobody is left to hold
        it). Its waiters get :class:`PipelineGoneError` with ``reason``."""
        if pipeline_id in self.state.pipelines:
            self._remove(pipeline_id, reason)

    def _remove(self, pipeline_id: str, reason: str) -> None:
        spec = self.state.pipelines[pipeline_id]
        self._observe("removing", pipeline_id, reason)
        cancelled = self.state.unregister(pipeline_id)
        self.keys.forget(pipeline_id, spec.clusters)
        self.unreconciled.discard(pipeline_id)
        self.leases.drop(pipeline_id)
        self.preempt_reports.pop(pipeline_id, None)
        reclaim = self._reclaims.pop(pipeline_id, None)
        if reclaim is not None and reclaim is not asyncio.current_task():
            reclaim.cancel()
        self._resizers.pop(pipeline_id, None)
        error = PipelineGoneError(f"pipeline {pipeline_id!r} was unregistered ({reason})")
        for request in cancelled:
            self._resolve(request.cluster_id, error=error)
        for future in self._release_waiters.pop(pipeline_id, []):
            if not future.done():
                future.set_exception(error)
        self._dispatch()
        self._changed("unregister")

    def fence_pipeline(self, pipeline_id: str, reason: str) -> None:
        """Fence a pipeline from outside a resize (a transport found it unresponsive)."""
        if pipeline_id in self.state.pipelines:
            if pipeline_id in self.unreconciled:  # its ranks in doubt may be awake: they keep their GPUs
                settle_unanswered(self.state, pipeline_id)
                self.unreconciled.discard(pipeline_id)
                self._after_reconcile()
            self.state.fence(pipeline_id, reason)
            self._dispatch()
            self._changed("fence")

    def drain(self, operator: str | None) -> list[str]:
        """Refuse new registrations from now on (an operator action); returns who is registered."""
        self.leases.check_operator(operator, "draining the scheduler")
        self.draining = True
        self._changed("drain")
        return sorted(self.state.pipelines)

    def _owner(self, pipeline_id: str, lease: object) -> None:
        """Check the lease of a known pipeline (an unknown one gets the state's error later, a
        reclaimed one says so)."""
        if pipeline_id in self.state.pipelines:
            self.leases.check(pipeline_id, lease)
        elif pipeline_id in self.reclaimed:
            raise PipelineGoneError(f"pipeline {pipeline_id!r} was {self.reclaimed[pipeline_id]}")

    # -- requests ---------------------------------------------------------------------------------

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
        """Block until granted (see :meth:`SchedulerState.request` for the rules). ``request_id``
        is the call's idempotency key: a retry with the same key finds the first attempt's
        request still waiting, or its stage granted, and answers that."""
        timeout_s = _check_timeout(timeout_s)
        started = self.state.clock()
        self._owner(pipeline_id, lease)
        timeout_s = await self._until_reattached(pipeline_id, timeout_s)
        self._owner(pipeline_id, lease)
        retried = self._retried(pipeline_id, cluster, request_id)
        if retried is not None:
            return await self._answer(retried)
        if self.keys.is_pending(cluster_id(pipeline_id, cluster), request_id):
            return await self._wait_grant(pipeline_id, cluster, timeout_s, started)
        outcome = self.state.request(pipeline_id, cluster, int(priority), step_target)
        self._changed("request")
        if outcome.granted:
            return await self._answer(Grant(pipeline_id, cluster, outcome.gpus, outcome.dp_ranks, True, 0.0))
        self.keys.enqueued(cluster_id(pipeline_id, cluster), request_id)
        return await self._wait_grant(pipeline_id, cluster, timeout_s, started)

    async def signal_demand(
        self,
        pipeline_id: str,
        lease: str,
        rollout_id: int,
        step_target: int,
        timeout_s: float,
        request_id: str | None = None,
    ) -> Grant:
        """Pre-signal rollout ``rollout_id``: start its epoch (the older rollout's streams end,
        and its late reports are ignored from now on), write the open-demand registry and block
        until at least one generation worker is awake. A retry (the same ``rollout_id``) keeps the
        streams its first attempt's rollout may already have opened.

        :raises InvalidRequestError: a bad ``step_target``, or a ``rollout_id`` older than the
            pipeline's current rollout; nothing was changed.
        """
        timeout_s = _check_timeout(timeout_s)
        started = self.state.clock()
        self._owner(pipeline_id, lease)
        timeout_s = await self._until_reattached(pipeline_id, timeout_s)
        if not self.keys.is_pending(cluster_id(pipeline_id, ACTOR_INFER), request_id):
            self.state.check_request(pipeline_id, ACTOR_INFER, Priority.GENERATION, step_target)
        self.state.open_rollout(pipeline_id, rollout_id)
        log.debug("pipeline %s signals demand for rollout %s (%s samples)", pipeline_id, rollout_id, step_target)
        left = max(0.001, timeout_s - (self.state.clock() - started))
        return await self.request_gpus(
            pipeline_id, lease, ACTOR_INFER, Priority.GENERATION, step_target, left, request_id
        )

    async def release(self, pipeline_id: str, lease: str, cluster: str, timeout_s: float = 120.0) -> None:
        """Release a cluster; for the generation cluster, wait until its workers sleep. Releasing
        what is not held does nothing, so a retried release needs no idempotency key."""
        timeout_s = _check_timeout(timeout_s)
        self._owner(pipeline_id, lease)
        timeout_s = await self._until_reattached(pipeline_id, timeout_s)
        self._owner(pipeline_id, lease)
        needs_resize = self.state.release(pipeline_id, cluster)
        self._resolve(
            cluster_id(pipeline_id, cluster),
            error=InvalidRequestError(
                f"{cluster_id(pipeline_id, cluster)!r} was released while its request was pending"
            ),
        )
        self._changed("release")
        if needs_resize:
            await self._wait_release(pipeline_id, timeout_s)
        await self._flush()

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
        """Release one cluster and request another with no planning pass in between
        (``request_id``: the request's idempotency key, as for :meth:`request_gpus`)."""
        timeout_s = _check_timeout(timeout_s)
        self._owner(pipeline_id, lease)
        started = self.state.clock()
        if release_cluster == cluster:
            raise InvalidRequestError(f"release_and_request of {cluster!r} for itself; use request_gpus")
        timeout_s = await self._until_reattached(pipeline_id, timeout_s)
        self._owner(pipeline_id, lease)
        # A retry whose first attempt already released and asked: answer what that one asked.
        retried = self._retried(pipeline_id, cluster, request_id)
        if retried is not None:
            return await self._answer(retried)
        if self.keys.is_pending(cluster_id(pipeline_id, cluster), request_id):
            return await self._wait_grant(pipeline_id, cluster, timeout_s, started)
        # Validate both halves first: a bad call must not leave the cluster released.
        spec, _, _ = self.state.check_request(pipeline_id, cluster, int(priority), step_target)
        self.state.check_cluster(spec, release_cluster)
        needs_resize = self.state.release(pipeline_id, release_cluster)
        outcome = self.state.request(pipeline_id, cluster, int(priority), step_target)
        if not outcome.granted:
            self.keys.enqueued(cluster_id(pipeline_id, cluster), request_id)
        self._changed("request")
        if needs_resize:
            await self._wait_release(pipeline_id, timeout_s)
        if outcome.granted:
            return await self._answer(Grant(pipeline_id, cluster, outcome.gpus, outcome.dp_ranks, True, 0.0))
        remaining = max(0.001, timeout_s - (self.state.clock() - started))
        return await self._wait_grant(pipeline_id, cluster, remaining, started)

    async def planned_release(self, pipeline_id: str, lease: str, dp_ranks: Iterable[int], timeout_s: float) -> None:
        """Give specific generation workers back and wait until they sleep."""
        timeout_s = _check_timeout(timeout_s)
        self._owner(pipeline_id, lease)
        timeout_s = await self._until_reattached(pipeline_id, timeout_s)
        if self.state.plan_release(pipeline_id, dp_ranks):
            self._changed("release")
            await self._wait_release(pipeline_id, timeout_s)
        await self._flush()

    # -- progress ---------------------------------------------------------------------------------

    def apply_progress(self, lease: str, report: ProgressReport) -> None:
        """Apply one progress report of a pipeline that ``lease`` owns (see
        :meth:`~.state.SchedulerState.apply_progress`: a report of an older rollout changes
        nothing).

        :raises InvalidRequestError: a malformed report; nothing was changed.
        """
        if not isinstance(report, ProgressReport):
            raise InvalidRequestError(f"not a progress report: {report!r:.80}")
        self._owner(report.pipeline_id, lease)
        outcome = self.state.apply_progress(report)
        if outcome != IGNORED:
            self._changed("demand retired" if outcome == RETIRED else PROGRESS, report.pipeline_id)

    def report_preempt(self, pipeline_id: str, lease: str, dp_rank: int, retracted: int) -> None:
        if pipeline_id not in self.state.pipelines:
            return  # late, from a pipeline already gone: nothing to count
        self.leases.check(pipeline_id, lease)
        self.preempt_reports[pipeline_id] = self.preempt_reports.get(pipeline_id, 0) + 1

    # -- reading ----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return snapshot(
            self.state,
            {
                "cycles": self.cycles,
                "policy": self.policy.name,
                "resizing": self.state.in_transition(),
                "preempt_reports": dict(self.preempt_reports),
                "reclaimed": dict(self.reclaimed),
                "draining": self.draining,
                "entitled_bundles": dict(sorted(self.core.targets.items())),
                "recovering": sorted(self.unreconciled),
            },
        )

    def diagnostic(self, headline: str = "") -> str:
        text = diagnostic(self.state, headline)
        if self.unreconciled:
            text += f"\nnot reattached since the scheduler restarted: {sorted(self.unreconciled)} (nothing is planned)"
        status = self.persistence()
        if status is not None and (status["saved"] < status["changes"] or status["failure"] or status["stale"]):
            text += (
                f"\nstate saving to {status['store']}: {status['changes'] - status['saved']} change(s) not saved"
                f"{'; last failure: ' + status['failure'] if status['failure'] else ''}"
                f"{'; superseded: ' + status['stale'] if status['stale'] else ''}"
            )
        return text

    # -- waiting ----------------------------------------------------------------------------------

    async def _wait_grant(self, pipeline_id: str, cluster: str, timeout_s: float, started: float) -> Grant:
        cid = cluster_id(pipeline_id, cluster)
        future = self._waiters.get(cid)
        if future is None or future.done():  # else a retry joins the first attempt's wait
            future = asyncio.get_running_loop().create_future()
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
                self._withdraw(cid, future, pipeline_id, cluster)
                raise SchedulerTimeoutError(f"{cid} was not granted within {timeout_s:.1f}s", report) from None
        except asyncio.CancelledError:
            self._withdraw(cid, future, pipeline_id, cluster)
            raise
        return await self._answer(
            Grant(
                grant.pipeline_id,
                grant.cluster,
                grant.gpus,
                grant.dp_ranks,
                True,
                round(self.state.clock() - started, 6),
            )
        )

    def _withdraw(self, cid: str, future: asyncio.Future[Grant], pipeline_id: str, cluster: str) -> None:
        """A waiter gave up: withdraw its request, unless another attempt waits on it now."""
        if self._waiters.get(cid) is future:
            self._waiters.pop(cid, None)
            self.state.cancel_request(pipeline_id, cluster)
            self._changed("request")

    def _retried(self, pipeline_id: str, cluster: str, request_id: str | None) -> Grant | None:
        """The grant a retried stage request's first attempt got, if it got one."""
        cid = cluster_id(pipeline_id, cluster)
        alloc = self.state.fixed.get(cid)
        if alloc is not None and self.keys.is_granted(cid, request_id):
            return Grant(pipeline_id, cluster, alloc.gpus, (), True, 0.0)
        return None

    async def _answer(self, grant: Grant) -> Grant:
        """Answer a grant once it is saved: a restart must never forget a grant it gave."""
        await self._flush()
        return grant

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
            future.set_result(grant)

    def _fail_all(self, error: BaseException) -> None:
        for cid in list(self._waiters):
            self._resolve(cid, error=error)
        for futures in self._release_waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._release_waiters.clear()

    # -- the loop ---------------------------------------------------------------------------------

    def _changed(self, event: str, pipeline_id: str | None = None) -> None:
        if self._durable is not None:
            self._durable.changed()
        if self.core.note(event, pipeline_id):
            self._kick()
        self._observe("changed", event, pipeline_id)
        for listener in self._listeners:
            try:
                listener(event, self)
            except Exception:  # a broken observer must not break scheduling
                log.exception("scheduler listener failed on %s", event)

    def _observe(self, call: str, *args: Any) -> None:
        for observer in self._observers:
            try:
                getattr(observer, call)(*args)
            except Exception:  # a broken observer must not break scheduling
                log.exception("scheduler observer failed on %s", call)

    def _kick(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _loop(self) -> None:
        assert self._wakeup is not None
        clock = self.state.clock
        while not self._closed:
            deadline = self.core.deadline(clock())
            timeout = None if deadline is None else max(0.0, deadline - clock())
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                self.core.dirty = True  # a residency or an anticipation ran out
            self._wakeup.clear()
            try:
                # One pass plans and starts moves, never waits for an engine.
                # A pass that started no call and answered nobody changed nothing a second pass
                # would see differently: planning again at once would only spin.
                if self.unreconciled:
                    continue  # restored pipelines have not all reattached: nothing is planned yet
                due, started = self.core.dirty, time.perf_counter()
                plan = self.core.plan()
                if due:
                    self._observe("planned", plan, time.perf_counter() - started)
                if plan is not None and self._dispatch():
                    self._changed("commit")
            except Exception as exc:  # keep serving; every waiter learns what broke
                log.exception("planning pass failed")
                self._fail_all(exc if isinstance(exc, PlanInvariantError) else PlanInvariantError(repr(exc)))

    def _dispatch(self) -> bool:
        """Start the resize calls the state asks for, and answer what it says is decided. True
        if there was anything to do."""
        actions, events = self.state.take_actions(), self.state.take_events()
        if events:
            self._observe("answered", events)
        for action in actions:
            task = asyncio.get_running_loop().create_task(
                self._resize(action), name=f"rlix-resize-{action.pipeline_id}"
            )
            self._resizes.add(task)
            task.add_done_callback(self._resizes.discard)
        for event in events:
            if isinstance(event, Satisfied):
                request = event.request
                if request.cluster == ACTOR_INFER:
                    gpus, ranks = self.state.gen_grant(request.pipeline_id)
                    self.keys.enqueued(request.cluster_id, None)
                else:
                    gpus, ranks = self.state.fixed_gpus(request.pipeline_id, request.cluster), ()
                    self.keys.satisfied(request.cluster_id)
                self._resolve(request.cluster_id, Grant(request.pipeline_id, request.cluster, gpus, ranks, True))
            elif isinstance(event, Fenced):
                log.error(
                    "pipeline %s: %s; fencing it, its GPUs are reclaimed in %.0fs unless it unregisters",
                    event.pipeline_id,
                    event.reason,
                    self.fence_grace_s,
                )
                self._schedule_reclaim(event.pipeline_id, event.reason)
                error = PipelineGoneError(f"pipeline {event.pipeline_id!r} is fenced: {event.reason}")
                for request in event.cancelled:
                    self._resolve(request.cluster_id, error=error)
                for future in self._release_waiters.pop(event.pipeline_id, []):
                    if not future.done():
                        future.set_exception(error)
            elif isinstance(event, ReleaseDone):
                for future in self._release_waiters.pop(event.pipeline_id, []):
                    if not future.done():
                        future.set_result(None)
        return bool(actions or events)

    def _schedule_reclaim(self, pipeline_id: str, reason: str) -> None:
        if pipeline_id in self._reclaims or self._closed:
            return

        async def reclaim() -> None:
            await asyncio.sleep(self.fence_grace_s)
            if pipeline_id not in self.state.pipelines:
                return
            why = f"reclaimed {self.fence_grace_s:g}s after it was fenced ({reason})"
            if self._on_reclaim is not None:
                try:
                    await self._on_reclaim(pipeline_id, why)
                except Exception:  # stopping it is best effort; the GPUs come back regardless
                    log.exception("stopping pipeline %s before reclaiming its GPUs failed", pipeline_id)
            log.warning("pipeline %s: %s", pipeline_id, why)
            self.reclaimed[pipeline_id] = why
            self._remove(pipeline_id, why)

        self._reclaims[pipeline_id] = asyncio.get_running_loop().create_task(
            reclaim(), name=f"rlix-reclaim-{pipeline_id}"
        )

    async def _resize(self, action: ResizeAction) -> None:
        # The move that asks for this call is saved first: a restarted scheduler must know that
        # an engine may be changing.
        try:
            await self._flush()
        except StaleWriterError:
            return  # superseded: a newer scheduler decides what this engine does
        resizer = self._resizers.get(action.pipeline_id)
        if resizer is None:
            return  # unregistered meanwhile: the state freed its GPUs then
        outcome = await self._executor.run(resizer, action)
        if self._closed:
            return
        self.core.resized(action, outcome)
        self._observe("resized", action, outcome)
        self._dispatch()
        self._changed("commit")


__all__ = ["Listener", "Resizer", "SchedulerService"]
