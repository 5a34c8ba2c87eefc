"""Reconciling a restored state with what a pipeline's process reports about itself. Pure.

After a restart the scheduler's state comes from the store (:mod:`.persist`), and may disagree
with the engines: a resize in flight at the crash may have finished or not, an answer may have
been lost. Before anything is planned, each live pipeline reports a :class:`PipelineReport` --
the DP ranks its engines answered awake after their last resize (once every resize it was running
has finished), the stages it holds, and the calls it has in flight -- and :func:`reconcile`
brings the state in line with it:

* generation: a rank the pipeline reports awake and whose GPUs the state gives it is awake; a
  rank it reports asleep gives its GPUs back; a rank awake on GPUs the state gives to someone
  else is a **conflict**;
* stages: a fixed allocation the pipeline neither holds nor has a call in flight for (a request
  whose answer was lost, a release not answered yet) is freed; a stage the pipeline holds and the
  state does not is taken back for it if its GPUs are idle, else a conflict;
* pending requests no in-flight call of the pipeline waits for are dropped (their caller gave
  up); those it waits for stay, and the call's retry finds them (see the service's idempotency
  keys).

A conflict means two owners could be using one GPU: the caller fences that pipeline (its GPUs
stay assigned to it until it unregisters or is reclaimed), never silently moves a GPU.
:func:`settle_unanswered` is for a pipeline that did not report in time: every rank whose
outcome is unknown is kept as awake (holding its GPUs), and the caller fences it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rlix_plugin.hookspecs import ACTOR_INFER, InvalidRequestError

from .ownership import describe
from .state import FixedAllocation, GenerationAllocation, SchedulerState
from .topology import cluster_id

#: Kinds of :class:`CallInFlight`.
REQUEST, RELEASE = "request", "release"


@dataclass(frozen=True)
class CallInFlight:
    """A blocking call the pipeline's process is making: its idempotency key, what it asks, and
    how long it may still wait."""

    request_id: str
    kind: str
    cluster: str
    remaining_s: float


@dataclass(frozen=True)
class PipelineReport:
    """What a pipeline's process says of itself after a scheduler restart.

    ``awake``: the DP ranks its engines answered awake after their last resize, ``None`` when it
    cannot tell (its resize hook answered nothing). ``held``: stage cluster -> the priority it was
    granted at, for every grant it received and has not started to release. ``calls``: its calls
    in flight.
    """

    awake: tuple[int, ...] | None = ()
    held: Mapping[str, int] = field(default_factory=dict)
    calls: tuple[CallInFlight, ...] = ()


@dataclass
class Reconciled:
    """What :func:`reconcile` changed, for the log and the caller."""

    pipeline_id: str
    woke: list[int] = field(default_factory=list)
    slept: list[int] = field(default_factory=list)
    freed_stages: list[str] = field(default_factory=list)
    adopted_stages: list[str] = field(default_factory=list)
    dropped_requests: list[str] = field(default_factory=list)
    kept_requests: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v}


def check_report(report: object, pipeline_id: str) -> PipelineReport:
    """``report`` if it is a well-formed :class:`PipelineReport`.

    :raises InvalidRequestError: naming what is wrong (nothing was changed).
    """
    where = f"pipeline {pipeline_id!r}: reconcile report"
    if not isinstance(report, PipelineReport):
        raise InvalidRequestError(f"{where} must be a PipelineReport, got {report!r:.80}")
    if report.awake is not None and (not isinstance(report.awake, tuple) or not all(_is_int(r) for r in report.awake)):
        raise InvalidRequestError(f"{where}: awake must be None or a tuple of DP ranks, got {report.awake!r:.80}")
    if not isinstance(report.held, Mapping) or not all(
        isinstance(c, str) and _is_int(p) and 0 <= p <= 5 for c, p in report.held.items()
    ):
        raise InvalidRequestError(f"{where}: held must map stage clusters to priorities 0..5, got {report.held!r:.80}")
    if not isinstance(report.calls, tuple) or not all(
        isinstance(c, CallInFlight)
        and isinstance(c.request_id, str)
        and c.kind in (REQUEST, RELEASE)
        and isinstance(c.cluster, str)
        and isinstance(c.remaining_s, (int, float))
        for c in report.calls
    ):
        raise InvalidRequestError(f"{where}: calls must be a tuple of CallInFlight, got {report.calls!r:.80}")
    return report


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def reconcile(
    state: SchedulerState, pipeline_id: str, report: PipelineReport, request_ids: Mapping[str, str]
) -> Reconciled:
    """Bring ``state`` in line with ``report`` for one pipeline (see the module docstring;
    ``report`` is checked first: :func:`check_report`).

    :param request_ids: cluster id -> idempotency key of each pending request.
    """
    check_report(report, pipeline_id)
    done = Reconciled(pipeline_id)
    _generation(state, pipeline_id, report, done)
    _stages(state, pipeline_id, report, done)
    calls = {c.request_id for c in report.calls}
    for cid, request in list(state.pending.items()):
        if request.pipeline_id != pipeline_id:
            continue
        if request_ids.get(cid) in calls:
            done.kept_requests.append(cid)
        else:
            state.cancel_request(pipeline_id, request.cluster)
            done.dropped_requests.append(cid)
    _finish_release(state, pipeline_id)
    return done


def settle_unanswered(state: SchedulerState, pipeline_id: str) -> list[int]:
    """A pipeline that never reported: keep every rank in doubt as awake, so that its GPUs stay
    its own until it is reclaimed. Returns those ranks."""
    alloc = state.generation.get(pipeline_id)
    if alloc is None:
        return []
    doubt = sorted({*alloc.waking, *alloc.sleeping})
    alloc.waking.clear()
    alloc.sleeping.clear()
    alloc.active.update(doubt)
    return doubt


def _generation(state: SchedulerState, pid: str, report: PipelineReport, done: Reconciled) -> None:
    spec = state.pipelines[pid]
    alloc = state.generation.get(pid)
    known = {*alloc.active, *alloc.waking, *alloc.sleeping} if alloc is not None else set()
    awake = set(known) if report.awake is None else set(report.awake)
    bad = sorted(r for r in awake if not isinstance(r, int) or not 0 <= r < spec.dp_size)
    if bad:
        done.conflicts.append(f"reported awake DP ranks {bad} out of range 0..{spec.dp_size - 1}")
        awake -= set(bad)
    now = state.clock()
    for rank in sorted(known):
        assert alloc is not None
        gpus = spec.bundles[rank]
        mine = state.owner.held_by(gpus, (pid, rank))
        was_active = rank in alloc.active
        alloc.waking.pop(rank, None)
        alloc.sleeping.pop(rank, None)
        if rank in awake and mine:
            alloc.active.add(rank)
            alloc.awake_since.setdefault(rank, now)
            if not was_active:
                done.woke.append(rank)
            continue
        if rank in awake:
            # Awake where the state says others hold GPUs: keep what it holds (the caller fences
            # the pipeline, and unregistering it frees exactly the GPUs it holds).
            alloc.active.add(rank)
            done.conflicts.append(
                f"DP rank {rank} is awake on GPUs {list(gpus)} held by "
                f"{sorted({describe(state.owner[g]) for g in gpus})}"
            )
            continue
        alloc.active.discard(rank)
        alloc.awake_since.pop(rank, None)
        for gpu in gpus:
            if state.owner[gpu] == (pid, rank):
                state.owner.free((gpu,), (pid, rank))
        done.slept.append(rank)
    for rank in sorted(awake - known):
        gpus = spec.bundles[rank]
        if not state.owner.all_idle(gpus):
            done.conflicts.append(
                f"DP rank {rank} is awake, and the scheduler gave its GPUs {list(gpus)} to "
                f"{sorted({describe(state.owner[g]) for g in gpus if state.owner[g] is not None})}"
            )
            continue
        state.owner.take(gpus, (pid, rank))
        if alloc is None:
            alloc = state.generation[pid] = GenerationAllocation(pid, since=now)
        alloc.active.add(rank)
        alloc.awake_since[rank] = now
        done.woke.append(rank)


def _stages(state: SchedulerState, pid: str, report: PipelineReport, done: Reconciled) -> None:
    spec = state.pipelines[pid]
    wanted = {c.cluster for c in report.calls}
    now = state.clock()
    for cid, alloc in list(state.fixed.items()):
        if alloc.pipeline_id != pid or alloc.cluster in report.held or alloc.cluster in wanted:
            continue
        state.owner.free(alloc.gpus, cid)
        del state.fixed[cid]
        state.stage_seen_at[pid] = now
        done.freed_stages.append(cid)
    for cluster, priority in sorted(report.held.items()):
        cid = cluster_id(pid, cluster)
        if cid in state.fixed:
            continue
        if cluster not in spec.clusters or cluster == ACTOR_INFER:
            done.conflicts.append(f"reports holding {cluster!r}, which is not one of its stages")
            continue
        gpus = tuple(spec.clusters[cluster].gpus)
        if not state.owner.all_idle(gpus):
            done.conflicts.append(
                f"holds {cid!r} on GPUs {list(gpus)}, which the scheduler gave to "
                f"{sorted({describe(state.owner[g]) for g in gpus if state.owner[g] is not None})}"
            )
            continue
        state.owner.take(gpus, cid)
        state.fixed[cid] = FixedAllocation(pid, cluster, int(priority), gpus, now)
        state.stage_seen_at[pid] = now
        done.adopted_stages.append(cid)


def _finish_release(state: SchedulerState, pid: str) -> None:
    """A planned release whose ranks are all asleep now is over (its caller's retry returns)."""
    release = state.planned_releases.get(pid)
    alloc = state.generation.get(pid)
    if release is None:
        return
    if alloc is None:
        del state.planned_releases[pid]
        return
    if release.drop_cluster:
        if alloc.idle_cluster:
            del state.planned_releases[pid]
            del state.generation[pid]
        else:
            release.ranks = {*alloc.active}
        return
    release.ranks &= alloc.active
    if not release.ranks:
        del state.planned_releases[pid]


__all__ = [
    "CallInFlight",
    "PipelineReport",
    "REQUEST",
    "RELEASE",
    "Reconciled",
    "check_report",
    "reconcile",
    "settle_unanswered",
]
