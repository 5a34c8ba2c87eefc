"""Persistence and restart of the scheduling service: its record, its restore, the reattachment
of restored pipelines, and the planning gate until they all reattached.

:class:`Recovery` is a part of :class:`~.service.SchedulerService` (a base class of it), kept in
its own module because it is one job of its own: the service's record is the state
(:mod:`.persist`) plus the lease digests, the idempotency keys (:mod:`.keys`) and the operator
facts; it is saved through a write-ahead log (:mod:`.durable`) on every change; a service
restored from it plans nothing until every restored pipeline reattached with its report
(:mod:`.rehydrate`) or was fenced for not answering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rlix_plugin.hookspecs import Grant, InvalidRequestError, PipelineGoneError, SchedulerTimeoutError

from .durable import DurableLog
from .keys import RequestKeys
from .leases import Leases
from .persist import StateFormatError, dump_state, load_state
from .rehydrate import PipelineReport, Reconciled, check_report, reconcile, settle_unanswered
from .state import SchedulerState
from .store import StaleWriterError, StateStore
from .topology import cluster_id

if TYPE_CHECKING:
    from .core import SchedulerCore
    from .executor import Resizer

log = logging.getLogger("rlix_plugin.scheduler.service")


class Recovery:
    """The persistence and restart part of the service (see the module docstring)."""

    # What it shares with the rest of the service (set up by SchedulerService.__init__).
    state: SchedulerState
    core: SchedulerCore
    leases: Leases
    keys: RequestKeys
    reclaimed: dict[str, str]
    draining: bool
    preempt_reports: dict[str, int]
    #: Restored pipelines that have not reattached yet: nothing is planned while there are any.
    unreconciled: set[str]
    _durable: DurableLog | None
    _reattached: asyncio.Event | None
    _record_parts: dict[str, Callable[[], Any]]
    _resizers: dict[str, Resizer]
    _waiters: dict[str, asyncio.Future[Grant]]
    _closed: bool

    if TYPE_CHECKING:

        def _dispatch(self) -> bool: ...
        def _changed(self, event: str, pipeline_id: str | None = None) -> None: ...
        def _kick(self) -> None: ...
        def _resolve(self, cid: str, grant: Grant | None = None, error: BaseException | None = None) -> None: ...
        def _fail_all(self, error: BaseException) -> None: ...
        def diagnostic(self, headline: str = "") -> str: ...

    @property
    def epoch(self) -> int | None:
        """This incarnation's epoch in its store (None without one)."""
        return self._durable.epoch if self._durable is not None else None

    @property
    def store(self) -> StateStore | None:
        return self._durable.store if self._durable is not None else None

    @property
    def saves(self) -> int:
        """Records saved to the store so far."""
        return self._durable.saves if self._durable is not None else 0

    def persistence(self) -> dict[str, Any] | None:
        """Where saving stands (None without a store): see :meth:`DurableLog.status`."""
        return self._durable.status() if self._durable is not None else None

    def add_record_part(self, name: str, dump: Callable[[], Any]) -> None:
        """Save ``dump()`` with every record, under ``name`` (a transport's own state)."""
        self._record_parts[name] = dump

    def record(self) -> dict[str, Any]:
        """The persisted record: the state (:mod:`.persist`), the service's part, the parts."""
        record = {
            "state": dump_state(self.state, time.time()),
            "service": {
                "leases": self.leases.digests(),
                "keys": self.keys.dump(),
                "reclaimed": dict(self.reclaimed),
                "draining": self.draining,
                "preempt_reports": dict(self.preempt_reports),
                "cycles": self.core.cycles,
            },
        }
        for name, dump in self._record_parts.items():
            record[name] = dump()
        return record

    def restore(self, record: dict[str, Any]) -> list[str]:
        """Take the state of a saved ``record`` (before :meth:`start`). Every restored pipeline is
        unreconciled until it reattaches. Returns the restored pipelines.

        :raises StateFormatError: the record cannot be loaded (nothing was changed).
        """
        try:  # the service's part first: nothing changes unless all of the record loads
            service = record["service"]
            keys = RequestKeys()
            keys.load(service["keys"])
            leases = {str(p): str(d) for p, d in service["leases"].items()}
            reclaimed = {str(p): str(r) for p, r in service["reclaimed"].items()}
            preempts = {str(p): int(n) for p, n in service["preempt_reports"].items()}
            draining, cycles = bool(service["draining"]), int(service["cycles"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateFormatError(f"persisted service record is damaged: {type(exc).__name__}: {exc}") from None
        state = load_state(record["state"], self.state.pool, self.state.clock, time.time(), into=self.state)
        self.leases.restore(leases)
        self.keys = keys
        self.reclaimed.update(reclaimed)
        self.preempt_reports.update(preempts)
        self.draining, self.core.cycles = draining, cycles
        self.unreconciled = set(state.pipelines)
        if self._durable is not None:
            self._durable.changed()  # the new epoch's first record
        return sorted(state.pipelines)

    @property
    def recovering(self) -> bool:
        """Restored pipelines have not all reattached: nothing is planned yet."""
        return bool(self.unreconciled)

    async def reattach(
        self, pipeline_id: str, lease: str, resizer: Resizer, report: PipelineReport | None = None
    ) -> dict[str, Any]:
        """A restored pipeline's process is back in touch: its resizes go to ``resizer`` from now
        on and, the first time, the state is reconciled with its ``report`` (:mod:`.rehydrate`;
        a conflict fences it). Once every restored pipeline reattached (or was fenced), planning
        resumes. Returns what reconciling changed.

        :raises InvalidRequestError: the pipeline is not registered (it was reaped meanwhile).
        :raises NotPipelineOwnerError: ``lease`` is not its lease.
        """
        if pipeline_id not in self.state.pipelines:
            raise InvalidRequestError(f"unknown pipeline {pipeline_id!r}; register it first")
        self.leases.check(pipeline_id, lease)
        report = check_report(report, pipeline_id)
        if pipeline_id not in self.state.fenced:
            self._resizers[pipeline_id] = resizer
        if pipeline_id not in self.unreconciled:
            return {"pipeline_id": pipeline_id, "reconciled": False}
        done = reconcile(self.state, pipeline_id, report, self.keys.pending)
        self._reconciled(pipeline_id, done, report)
        await self._flush()
        return {"reconciled": True, **done.summary()}

    def expire_unreconciled(self, reason: str) -> list[str]:
        """Fence every restored pipeline that has not reattached (its ranks in doubt are kept as
        awake, holding their GPUs, until the grace reclaims them). Returns them."""
        expired = sorted(self.unreconciled)
        for pipeline_id in expired:
            settle_unanswered(self.state, pipeline_id)
            self.unreconciled.discard(pipeline_id)
            self.state.fence(pipeline_id, reason)
        if expired:
            log.error("pipelines %s did not reattach after the scheduler restarted: fenced (%s)", expired, reason)
            self._after_reconcile()
        return expired

    def _reconciled(self, pipeline_id: str, done: Reconciled, report: PipelineReport) -> None:
        self.unreconciled.discard(pipeline_id)
        for cid in done.dropped_requests:
            self._resolve(cid, error=PipelineGoneError(f"{cid!r}: its request was dropped at a scheduler restart"))
        log.info("pipeline %s reattached after a scheduler restart: %s", pipeline_id, done.summary())
        if done.conflicts:
            self.state.fence(pipeline_id, "after a scheduler restart: " + "; ".join(done.conflicts))
        # A kept request nobody comes back for (the caller gave up meanwhile) is dropped once the
        # call's own time is up.
        loop = asyncio.get_running_loop()
        for call in report.calls:
            cid = cluster_id(pipeline_id, call.cluster)
            if cid in done.kept_requests:
                loop.call_later(max(0.0, call.remaining_s) + 1.0, self._expire_orphan, cid, call.request_id)
        self._after_reconcile()

    def _after_reconcile(self) -> None:
        self._dispatch()
        self._changed("reconcile")
        if self._reattached is not None:
            self._reattached.set()
            self._reattached = asyncio.Event()
        if not self.unreconciled:
            self.core.dirty = True
            self._kick()

    def _expire_orphan(self, cid: str, key: str) -> None:
        request = self.state.pending.get(cid)
        if request is not None and cid not in self._waiters and self.keys.is_pending(cid, key):
            log.warning("request %s (%s) was not retried after the scheduler restarted; dropping it", cid, key)
            self.state.cancel_request(request.pipeline_id, request.cluster)
            self._changed("request")

    async def _until_reattached(self, pipeline_id: str, timeout_s: float) -> float:
        """Wait (at most ``timeout_s``) until a restored pipeline reattached; returns the time left."""
        started = self.state.clock()
        while pipeline_id in self.unreconciled:
            left = timeout_s - (self.state.clock() - started)
            if self._reattached is None:
                self._reattached = asyncio.Event()
            if left <= 0:
                raise SchedulerTimeoutError(
                    f"pipeline {pipeline_id!r} has not reattached to the restarted scheduler within {timeout_s:.1f}s",
                    self.diagnostic("scheduler state now:"),
                )
            event = self._reattached
            try:
                await asyncio.wait_for(event.wait(), left)
            except asyncio.TimeoutError:
                pass
        return max(0.001, timeout_s - (self.state.clock() - started))

    async def _flush(self) -> None:
        """Return once every change so far is saved (at once without a store)."""
        if self._durable is not None:
            await self._durable.flush()

    def _stale(self, error: StaleWriterError) -> None:
        """A newer incarnation owns the store: this one must not answer anyone again."""
        self._closed = True
        self._fail_all(PipelineGoneError(f"this scheduler was superseded by a newer one ({error})"))
        self._kick()

    async def reissue_lease(self, pipeline_id: str, resizer: Resizer) -> str:
        """A new lease for a registered pipeline whose registration is being retried (its first
        answer, and the lease in it, were lost): the old lease stops working. Its resizes go to
        ``resizer``; a restored pipeline counts as reattached with nothing awake and nothing held
        (it had not started: its process was still waiting for the registration's answer)."""
        if pipeline_id not in self.state.pipelines:
            raise InvalidRequestError(f"unknown pipeline {pipeline_id!r}; register it first")
        lease = self.leases.issue(pipeline_id)
        await self.reattach(pipeline_id, lease, resizer, PipelineReport())
        self._changed("register")
        await self._flush()
        return lease


__all__ = ["Recovery"]
