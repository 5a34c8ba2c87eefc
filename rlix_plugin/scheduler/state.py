"""Scheduler state and the operations that change it, without I/O, threads or clocks of its own.

Every operation validates its input first and raises :class:`InvalidRequestError` (naming the bad
value) before changing anything. GPUs change hands only through moves (:mod:`.plan`) the validator
accepted, and only as fast as the engines do:

* :meth:`SchedulerState.start` commits a plan: each move's engines become *sleeping* or *waking*
  (they hold their GPUs, neither idle nor serving), the GPUs its targets will get are reserved,
  and the resize calls to make are returned as :class:`ResizeAction` values;
* :meth:`SchedulerState.resized` takes one call's :class:`ResizeOutcome`: a confirmed sleep hands
  its GPUs to the move's target, a confirmed wake makes the engine serve, a failure fences that
  pipeline alone; it returns the calls the move needs next.

Who the driver must answer comes out of :meth:`SchedulerState.take_events` (requests satisfied,
pipelines fenced, releases done). The async service and the simulator drive this same object.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Union

from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ClusterSpec,
    InvalidRequestError,
    PipelineGoneError,
    PipelineLimits,
    Priority,
    StreamProgress,
    SwitchCosts,
)
from rlix_plugin.progress import BEGIN, END, ProgressReport

from .demand import APPLIED, DemandLedger, StreamKey, require_int
from .estimates import Estimates
from .ownership import Owner, Ownership
from .plan import Move, Plan
from .topology import PipelineSpec, PoolTopology, cluster_id, validate_pipeline


@dataclass
class FixedAllocation:
    """A non-generation cluster holding its whole device mapping."""

    pipeline_id: str
    cluster: str
    priority: int
    gpus: tuple[int, ...]
    since: float


@dataclass
class GenerationAllocation:
    """A pipeline's generation cluster while it is held (requested and not released).

    Every DP rank is in at most one of ``active`` (awake, serving), ``waking`` (a move will wake
    it, or is waking it) and ``sleeping`` (a move is putting it to sleep); ``waking`` and
    ``sleeping`` map the rank to its move. All three may be empty: the cluster is still held.
    """

    pipeline_id: str
    active: set[int] = field(default_factory=set)
    waking: dict[int, int] = field(default_factory=dict)
    sleeping: dict[int, int] = field(default_factory=dict)
    since: float = 0.0
    #: When each awake rank finished waking (minimum residency before rebalancing).
    awake_since: dict[int, float] = field(default_factory=dict)

    @property
    def held(self) -> int:
        """Bundles the pipeline has or is about to have (awake and waking)."""
        return len(self.active) + len(self.waking)

    @property
    def idle_cluster(self) -> bool:
        return not (self.active or self.waking or self.sleeping)


@dataclass
class PendingRequest:
    """A blocked ``request_gpus`` (or ``signal_demand``) waiting for the planner."""

    pipeline_id: str
    cluster: str
    priority: int
    step_target: int | None
    seq: int
    enqueued_at: float
    #: The move granting it, once one started (stages only).
    move: int | None = None

    @property
    def cluster_id(self) -> str:
        return cluster_id(self.pipeline_id, self.cluster)


@dataclass
class PlannedRelease:
    """Generation workers a pipeline gives back; ``drop_cluster`` when the whole cluster goes."""

    ranks: set[int]
    drop_cluster: bool
    requested_at: float


@dataclass(frozen=True)
class RequestOutcome:
    """What :meth:`SchedulerState.request` decided: granted now, or enqueued."""

    granted: bool
    gpus: tuple[int, ...] = ()
    dp_ranks: tuple[int, ...] = ()


@dataclass(frozen=True)
class ResizeAction:
    """One ``rlix_resize_infer`` call a move needs: put ``remove`` to sleep, or wake ``add``."""

    move: int
    pipeline_id: str
    remove: tuple[int, ...] = ()
    add: tuple[int, ...] = ()


@dataclass(frozen=True)
class ResizeOutcome:
    """What the call answered: the awake DP ranks (``None``: no implementation answered), or the
    error it raised; and how long it took."""

    awake: tuple[int, ...] | None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class MoveInFlight:
    """A started move: the calls it still waits for, and where freed GPUs go."""

    id: int
    move: Move
    started_at: float
    #: pipeline -> ranks whose sleep is not confirmed yet.
    sleeping: dict[str, set[int]]
    #: pipeline -> ranks whose wake was issued and is not confirmed yet.
    waking: dict[str, set[int]] = field(default_factory=dict)
    #: GPU -> the owner it goes to once the engine holding it is asleep.
    reserved: dict[int, Owner] = field(default_factory=dict)
    sleeps_issued: bool = False
    targets_done: bool = False


# -- events the driver answers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Satisfied:
    request: PendingRequest


@dataclass(frozen=True)
class Fenced:
    pipeline_id: str
    reason: str
    cancelled: tuple[PendingRequest, ...]


@dataclass(frozen=True)
class ReleaseDone:
    pipeline_id: str


Event = Union[Satisfied, Fenced, ReleaseDone]


class SchedulerState:
    """Everything the scheduler knows. Mutated only by its methods."""

    def __init__(self, pool: PoolTopology, clock: Callable[[], float]) -> None:
        self.pool = pool
        self.clock = clock
        self.pipelines: dict[str, PipelineSpec] = {}
        #: What each pipeline declared about itself (maximum step target, generation quota).
        self.limits: dict[str, PipelineLimits] = {}
        self.admitted: set[str] = set()
        self.owner = Ownership(pool.num_gpus)
        self.fixed: dict[str, FixedAllocation] = {}
        self.generation: dict[str, GenerationAllocation] = {}
        self.pending: dict[str, PendingRequest] = {}
        self.demand = DemandLedger()
        self.estimates = Estimates()
        self.planned_releases: dict[str, PlannedRelease] = {}
        #: Pipelines whose engines failed a resize: kept out of planning until they unregister.
        self.fenced: dict[str, str] = {}
        self.moves: dict[int, MoveInFlight] = {}
        #: When each pipeline last held a stage (granted or released), for anticipation.
        self.stage_seen_at: dict[str, float] = {}
        #: Engine switches started, per pipeline (sleeps and wakes of one DP rank each).
        self.switches: dict[str, int] = {}
        self._events: list[Event] = []
        self._actions: list[ResizeAction] = []
        self._seq = itertools.count()
        self._move_ids = itertools.count(1)
        #: Generation layouts (TP, GPUs) -> (bundles, gpu -> rank) shared by the pipelines that
        #: register the same mapping, so the planner can work once per distinct layout.
        self._layouts: dict[tuple[int, tuple[int, ...]], PipelineSpec] = {}
        self._stage_gpus: dict[int, set[str]] | None = None
        self._placements: dict[str, list[int]] = {}

    # The registry and the streams live in the ledger; these names are the ones readers use.
    @property
    def open_demand(self) -> dict[str, int]:
        return self.demand.open_demand

    @property
    def progress(self) -> dict[str, dict[StreamKey, StreamProgress]]:
        return self.demand.progress

    # -- registration -------------------------------------------------------------------------------

    def register(
        self,
        pipeline_id: str,
        clusters: Mapping[str, ClusterSpec],
        switch_costs: SwitchCosts | None = None,
        limits: PipelineLimits | None = None,
    ) -> PipelineSpec:
        spec = validate_pipeline(self.pool, pipeline_id, clusters)
        if switch_costs is not None and not isinstance(switch_costs, SwitchCosts):
            raise InvalidRequestError(
                f"pipeline {pipeline_id!r}: switch_costs must be a SwitchCosts, got {switch_costs!r}"
            )
        if limits is not None and not isinstance(limits, PipelineLimits):
            raise InvalidRequestError(f"pipeline {pipeline_id!r}: limits must be a PipelineLimits, got {limits!r}")
        limits = limits or PipelineLimits()
        if limits.min_bundles > spec.dp_size:
            raise InvalidRequestError(
                f"pipeline {pipeline_id!r}: min_bundles {limits.min_bundles} exceeds its {spec.dp_size} generation bundles"
            )
        if pipeline_id in self.pipelines:
            raise InvalidRequestError(f"pipeline {pipeline_id!r} is already registered")
        key = (spec.tp, spec.infer.gpus)
        shared = self._layouts.get(key)
        if shared is None:
            self._layouts[key] = spec
        else:
            spec = replace(spec, bundles=shared.bundles, rank_of_gpu=shared.rank_of_gpu)
        self.pipelines[pipeline_id] = spec
        self._registrations_changed()
        self.limits[pipeline_id] = limits
        self.estimates.register(pipeline_id, switch_costs)
        return spec

    def admit(self, pipeline_id: str) -> None:
        self._spec(pipeline_id, admitted=False)
        self.admitted.add(pipeline_id)

    def unregister(self, pipeline_id: str) -> list[PendingRequest]:
        """Free everything the pipeline holds, in transition or not. Returns its pending requests
        (now cancelled). Its resizes still in flight are ignored when they answer."""
        if pipeline_id not in self.pipelines:
            return []
        for cid in [c for c, a in self.fixed.items() if a.pipeline_id == pipeline_id]:
            self._free_fixed(cid)
        cancelled = [r for r in self.pending.values() if r.pipeline_id == pipeline_id]
        for request in cancelled:
            self._drop_request(request)
        alloc = self.generation.pop(pipeline_id, None)
        if alloc is not None:
            spec = self.pipelines[pipeline_id]
            for rank in {*alloc.active, *alloc.waking, *alloc.sleeping}:
                for gpu in spec.bundles[rank]:
                    if self.owner[gpu] == (pipeline_id, rank):
                        self._release_gpu(gpu, alloc.sleeping.get(rank))
        for flight in list(self.moves.values()):
            if flight.sleeping.pop(pipeline_id, None) is not None or flight.waking.pop(pipeline_id, None) is not None:
                self._advance(flight)  # its other calls need not wait for this pipeline's answer
        self.demand.forget(pipeline_id)
        self.estimates.forget(pipeline_id)
        for table in (self.planned_releases, self.fenced, self.stage_seen_at, self.switches, self.limits):
            table.pop(pipeline_id, None)
        self.admitted.discard(pipeline_id)
        spec = self.pipelines.pop(pipeline_id)
        key = (spec.tp, spec.infer.gpus)
        if self._layouts.get(key) is not None and not any((p.tp, p.infer.gpus) == key for p in self.pipelines.values()):
            del self._layouts[key]
        self._registrations_changed()
        return cancelled

    def fence(self, pipeline_id: str, reason: str) -> list[PendingRequest]:
        """Keep a pipeline whose engines failed a resize out of planning. GPUs its engines may
        still use stay assigned to it until it unregisters; wakes planned for it and not issued
        yet are dropped. Returns its cancelled requests."""
        if pipeline_id not in self.pipelines or pipeline_id in self.fenced:
            return []
        self.fenced[pipeline_id] = reason
        cancelled = [r for r in self.pending.values() if r.pipeline_id == pipeline_id]
        for request in cancelled:
            self._drop_request(request)
        alloc = self.generation.get(pipeline_id)
        if alloc is not None:
            issued = {r for f in self.moves.values() for r in f.waking.get(pipeline_id, ())}
            for rank, _move in list(alloc.waking.items()):
                if rank not in issued:
                    self._cancel_wake(pipeline_id, rank)
        self.demand.retire(pipeline_id, self.clock())
        self.planned_releases.pop(pipeline_id, None)
        self._events.append(Fenced(pipeline_id, reason, tuple(cancelled)))
        return cancelled

    # -- requests and releases ----------------------------------------------------------------------

    def request(self, pipeline_id: str, cluster: str, priority: int, step_target: int | None) -> RequestOutcome:
        """Enqueue; a generation cluster that already has an awake worker is granted at once
        (its engines, not a second owner). Every GENERATION request writes the open-demand
        registry, whether it enqueues or short-circuits. A stage is granted once: asking again
        while it is held is an error (two callers would then share GPUs the first release hands
        to someone else)."""
        spec, cid, generation = self.check_request(pipeline_id, cluster, priority, step_target)
        if generation:
            assert step_target is not None
            self.demand.open(pipeline_id, step_target)
            alloc = self.generation.get(pipeline_id)
            if alloc is not None and alloc.active:
                return RequestOutcome(True, self._gen_gpus(spec, alloc.active), tuple(sorted(alloc.active)))
            if alloc is None:
                self.generation[pipeline_id] = GenerationAllocation(pipeline_id, since=self.clock())
        self.pending[cid] = PendingRequest(pipeline_id, cluster, priority, step_target, next(self._seq), self.clock())
        return RequestOutcome(False)

    def check_request(
        self, pipeline_id: str, cluster: str, priority: int, step_target: int | None
    ) -> tuple[PipelineSpec, str, bool]:
        """Validate a request without changing anything: (spec, cluster id, is generation).

        :raises InvalidRequestError: naming the bad value.
        :raises PipelineGoneError: the pipeline is fenced.
        """
        spec = self._spec(pipeline_id)
        cid = self.check_cluster(spec, cluster)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 6:
            raise InvalidRequestError(f"priority must be an int in 0..6, got {priority!r}")
        generation = cluster == ACTOR_INFER
        if generation != (priority == Priority.GENERATION):
            raise InvalidRequestError(
                f"cluster {cid!r} must be requested at priority {int(Priority.GENERATION)} (and only it)"
                if generation
                else f"priority {priority} (GENERATION) is only for {ACTOR_INFER!r}, not {cid!r}"
            )
        if generation:
            self._check_step_target(pipeline_id, f"step_target of {cid!r}", step_target)
        elif step_target is not None:
            raise InvalidRequestError(f"step_target is only for generation requests, got {step_target!r} for {cid!r}")
        if cid in self.pending:
            raise InvalidRequestError(f"a request for {cid!r} is already pending")
        if cid in self.fixed:
            raise InvalidRequestError(
                f"{cid!r} is already held (granted at priority {self.fixed[cid].priority}); release it before "
                "requesting it again"
            )
        if pipeline_id in self.planned_releases and generation:
            raise InvalidRequestError(f"{cid!r} is being released; wait for the release to finish")
        return spec, cid, generation

    def cancel_request(self, pipeline_id: str, cluster: str) -> bool:
        """Drop a pending request (its caller gave up). True if there was one."""
        request = self.pending.get(cluster_id(pipeline_id, cluster))
        if request is None:
            return False
        self._drop_request(request)
        return True

    def release(self, pipeline_id: str, cluster: str) -> bool:
        """Release a cluster. A fixed cluster is freed at once. The generation cluster loses its
        open demand and every worker is put to sleep by the next cycles (a planned release);
        returns True when such a resize is needed."""
        spec = self._spec(pipeline_id)
        cid = self.check_cluster(spec, cluster)
        request = self.pending.get(cid)
        if request is not None:
            self._drop_request(request)
        if cluster != ACTOR_INFER:
            if cid in self.fixed:
                self._free_fixed(cid)
            return False
        # Releasing the generation cluster ends the rollout: its demand, any stream whose end never
        # came, and the late reports of its epoch.
        self.demand.close(pipeline_id, self.clock())
        alloc = self.generation.get(pipeline_id)
        if alloc is None:
            return False
        for rank in list(alloc.waking):
            if not any(rank in f.waking.get(pipeline_id, ()) for f in self.moves.values()):
                self._cancel_wake(pipeline_id, rank)  # not issued yet: nothing to undo
        if alloc.idle_cluster:
            del self.generation[pipeline_id]
            self.planned_releases.pop(pipeline_id, None)
            return False
        self.planned_releases[pipeline_id] = PlannedRelease(
            {*alloc.active, *alloc.waking, *alloc.sleeping}, True, self.clock()
        )
        return True

    def plan_release(self, pipeline_id: str, dp_ranks: Iterable[int]) -> bool:
        """Give specific generation workers back. True when a resize is needed."""
        spec = self._spec(pipeline_id)
        ranks = set(dp_ranks)
        bad = sorted(r for r in ranks if not isinstance(r, int) or not 0 <= r < spec.dp_size)
        if bad:
            raise InvalidRequestError(f"pipeline {pipeline_id!r}: DP ranks {bad} out of range 0..{spec.dp_size - 1}")
        alloc = self.generation.get(pipeline_id)
        ranks &= {*alloc.active, *alloc.waking} if alloc is not None else set()
        if not ranks:
            return False
        current = self.planned_releases.get(pipeline_id)
        if current is not None:
            current.ranks |= ranks
        else:
            self.planned_releases[pipeline_id] = PlannedRelease(ranks, False, self.clock())
        return True

    # -- progress -----------------------------------------------------------------------------------

    def open_rollout(self, pipeline_id: str, rollout_id: int) -> None:
        """Rollout ``rollout_id`` signals its demand (see :meth:`DemandLedger.open_rollout`).

        :raises InvalidRequestError: a bad or older ``rollout_id``; nothing was changed.
        """
        self._spec(pipeline_id)
        self.demand.open_rollout(pipeline_id, rollout_id)

    def apply_progress(self, report: ProgressReport) -> str:
        """Apply one progress report (see :meth:`DemandLedger.apply`): ``IGNORED``, ``APPLIED`` or
        ``RETIRED``. A ``step_target`` above the pipeline's declared maximum is refused, as for a
        request.

        :raises InvalidRequestError: naming the bad value; nothing was changed.
        """
        self.demand.check_report(report)
        pipeline_id = report.pipeline_id
        self._spec(pipeline_id)
        if report.kind != END:
            self._check_step_target(pipeline_id, f"step_target of {pipeline_id!r}'s progress", report.step_target)
        now = self.clock()
        outcome = self.demand.apply(report, now, checked=True)
        if outcome == APPLIED and report.kind != END:
            alloc = self.generation.get(pipeline_id)
            self.estimates.observe_progress(
                pipeline_id,
                now,
                self.demand.completed(pipeline_id),
                len(alloc.active) if alloc is not None else 0,
                report.kind == BEGIN,
            )
        return outcome

    def _check_step_target(self, pipeline_id: str, what: str, step_target: object) -> None:
        require_int(what, step_target, 1)
        bound = self.limits[pipeline_id].max_step_target
        if bound is not None and step_target > bound:
            raise InvalidRequestError(
                f"{what} is {step_target}, above the {bound} the pipeline declared at registration"
            )

    def remaining(self, pipeline_id: str) -> int:
        return self.demand.remaining(pipeline_id)

    # -- moves: start and outcomes ----------------------------------------------------------------

    def start(self, plan: Plan) -> None:
        """Commit a validated plan: every move's engines enter their transition and the GPUs its
        targets will get are reserved. The resize calls to make come out of :meth:`take_actions`."""
        now = self.clock()
        for move in plan.moves:
            flight = MoveInFlight(next(self._move_ids), move, now, {p: set(r) for p, r in move.sleeps.items() if r})
            self.moves[flight.id] = flight
            for pid, ranks in move.sleeps.items():
                alloc = self.generation[pid]
                for rank in ranks:
                    alloc.active.remove(rank)
                    alloc.awake_since.pop(rank, None)
                    alloc.sleeping[rank] = flight.id
                self.switches[pid] = self.switches.get(pid, 0) + len(ranks)
            for pid, ranks in move.wakes.items():
                alloc, spec = self.generation[pid], self.pipelines[pid]
                for rank in ranks:
                    alloc.waking[rank] = flight.id
                    for gpu in spec.bundles[rank]:
                        self._reserve(flight, gpu, (pid, rank))
            if move.grant is not None:
                self.pending[move.grant].move = flight.id
                for gpu in move.grant_gpus:
                    self._reserve(flight, gpu, move.grant)
            self._advance(flight)

    def resized(self, action: ResizeAction, outcome: ResizeOutcome) -> None:
        """Apply one resize call's outcome; the calls its move needs next come out of
        :meth:`take_actions`.

        A sleep is confirmed when none of its ranks is still awake, a wake when all of them are;
        anything else (an error, no implementation answering, awake ranks that contradict the
        call) fences that pipeline and leaves its GPUs assigned to it.
        """
        flight = self.moves.get(action.move)
        pid = action.pipeline_id
        if flight is None or pid not in self.pipelines:
            return  # the move is over, or the pipeline unregistered meanwhile (its GPUs were freed)
        alloc = self.generation.get(pid)
        spec = self.pipelines[pid]
        ranks = set(action.remove or action.add)
        waking = bool(action.add)
        (flight.waking if waking else flight.sleeping).pop(pid, None)
        error = _contradiction(pid, ranks, waking, outcome)
        if alloc is None:
            self._advance(flight)
            return
        if error is None and pid not in self.fenced:
            self.estimates.observe_resize(pid, waking, outcome.seconds, len(ranks), spec.tp)
        if waking:
            for rank in ranks:
                if alloc.waking.get(rank) != flight.id:
                    continue
                del alloc.waking[rank]
                alloc.active.add(rank)  # awake, or -- after a failure -- possibly awake
                if error is None:
                    alloc.awake_since[rank] = self.clock()
        else:
            for rank in ranks:
                if alloc.sleeping.get(rank) != flight.id:
                    continue
                del alloc.sleeping[rank]
                if error is not None:
                    alloc.active.add(rank)  # may still hold its memory: keep its GPUs
                    continue
                for gpu in spec.bundles[rank]:
                    self._release_gpu(gpu, flight.id)
        if error is not None:
            self.fence(pid, error)
        self._check_release(pid)
        self._advance(flight)

    def take_actions(self) -> list[ResizeAction]:
        """The resize calls moves need now, each to be made once."""
        actions, self._actions = self._actions, []
        return actions

    def take_events(self) -> list[Event]:
        """What happened since the last call that a waiter must hear about: generation requests
        whose pipeline now has an awake worker are satisfied here."""
        for cid, request in list(self.pending.items()):
            if request.cluster == ACTOR_INFER:
                alloc = self.generation.get(request.pipeline_id)
                if alloc is not None and alloc.active:
                    del self.pending[cid]
                    self._events.append(Satisfied(request))
        events, self._events = self._events, []
        return events

    # -- reading ------------------------------------------------------------------------------------

    def idle_gpus(self) -> list[int]:
        return self.owner.idle()

    def gen_grant(self, pipeline_id: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(GPU ids, DP ranks) of the pipeline's awake generation workers."""
        alloc = self.generation.get(pipeline_id)
        if alloc is None:
            return (), ()
        return self._gen_gpus(self.pipelines[pipeline_id], alloc.active), tuple(sorted(alloc.active))

    def fixed_gpus(self, pipeline_id: str, cluster: str) -> tuple[int, ...]:
        alloc = self.fixed.get(cluster_id(pipeline_id, cluster))
        return alloc.gpus if alloc is not None else ()

    def in_transition(self) -> bool:
        return bool(self.moves)

    def stage_gpus(self) -> dict[int, set[str]]:
        """GPU -> pipelines whose stage mappings (every non-generation cluster) include it.
        Computed once per set of registrations; callers must not change it."""
        if self._stage_gpus is None:
            out: dict[int, set[str]] = {}
            for pid, spec in self.pipelines.items():
                for name, cluster in spec.clusters.items():
                    if name != ACTOR_INFER:
                        for gpu in cluster.gpus:
                            out.setdefault(gpu, set()).add(pid)
            self._stage_gpus = out
        return self._stage_gpus

    def placements(self, pipeline_id: str) -> list[int]:
        """Per generation DP rank of the pipeline: 0 when its bundle lies on the pipeline's own
        stage GPUs, 1 on no stage's GPUs, 2 on another pipeline's stage GPUs (whose stage will
        preempt that engine). Computed once per set of registrations."""
        out = self._placements.get(pipeline_id)
        if out is None:
            stage_gpus = self.stage_gpus()
            out = self._placements[pipeline_id] = [
                _placement(pipeline_id, bundle, stage_gpus) for bundle in self.pipelines[pipeline_id].bundles
            ]
        return out

    def _registrations_changed(self) -> None:
        self._stage_gpus = None
        self._placements.clear()

    # -- helpers ------------------------------------------------------------------------------------

    def _advance(self, flight: MoveInFlight) -> None:
        """Queue the calls ``flight`` needs next: its sleeps first; once none is outstanding, its
        wakes or grant; once those are done, the move is over."""
        if flight.sleeping:
            if not flight.sleeps_issued:
                flight.sleeps_issued = True
                self._actions.extend(
                    ResizeAction(flight.id, pid, remove=tuple(sorted(r))) for pid, r in sorted(flight.sleeping.items())
                )
            return
        if not flight.targets_done:
            flight.targets_done = True
            self._actions.extend(self._targets(flight))
        if not flight.waking and not flight.sleeping:
            self.moves.pop(flight.id, None)

    def _targets(self, flight: MoveInFlight) -> list[ResizeAction]:
        """Second phase of a move: grant its stage, issue its wakes (those still wanted)."""
        move = flight.move
        if move.grant is not None:
            request = self.pending.get(move.grant)
            if request is not None and request.move == flight.id:
                if self.owner.held_by(move.grant_gpus, move.grant):
                    del self.pending[move.grant]
                    self.fixed[move.grant] = FixedAllocation(
                        request.pipeline_id, request.cluster, request.priority, move.grant_gpus, self.clock()
                    )
                    self.stage_seen_at[request.pipeline_id] = self.clock()
                    self._events.append(Satisfied(request))
                else:  # a sleep failed: the GPUs it needs are still held; plan it again later
                    self._unreserve_grant(request)
        actions = []
        for pid, ranks in move.wakes.items():
            alloc = self.generation.get(pid)
            if alloc is None:
                continue
            spec = self.pipelines[pid]
            ready = []
            for rank in sorted(ranks):
                if alloc.waking.get(rank) != flight.id:
                    continue
                if self.owner.held_by(spec.bundles[rank], (pid, rank)) and self._wants_engines(pid):
                    ready.append(rank)
                else:
                    self._cancel_wake(pid, rank)
            if ready:
                flight.waking[pid] = set(ready)
                self.switches[pid] = self.switches.get(pid, 0) + len(ready)
                actions.append(ResizeAction(flight.id, pid, add=tuple(ready)))
        return actions

    def _wants_engines(self, pid: str) -> bool:
        """Whether a wake planned for ``pid`` is still worth making once its GPUs are free."""
        if pid in self.fenced or pid in self.planned_releases:
            return False
        return self.demand.remaining(pid) > 0 or cluster_id(pid, ACTOR_INFER) in self.pending

    def _reserve(self, flight: MoveInFlight, gpu: int, owner: Owner) -> None:
        if self.owner[gpu] is None:
            self.owner.take((gpu,), owner)
        else:  # held by an engine this move puts to sleep: it goes to ``owner`` once asleep
            flight.reserved[gpu] = owner

    def _release_gpu(self, gpu: int, move: int | None) -> None:
        """The engine holding ``gpu`` is asleep (or gone): hand the GPU to what its move reserved
        it for, if that still waits for it, else make it idle."""
        current = self.owner[gpu]
        flight = self.moves.get(move) if move is not None else None
        target = flight.reserved.pop(gpu, None) if flight is not None else None
        if target is not None and not self._reservation_valid(target, move):
            target = None
        self.owner.hand_over((gpu,), current, target)

    def _reservation_valid(self, target: Owner, move: int | None) -> bool:
        if type(target) is tuple:
            alloc = self.generation.get(target[0])
            return alloc is not None and alloc.waking.get(target[1]) == move
        request = self.pending.get(target) if isinstance(target, str) else None
        return request is not None and request.move == move

    def _cancel_wake(self, pid: str, rank: int) -> None:
        """Drop a wake that was not issued: its reserved GPUs go back to the pool."""
        alloc = self.generation[pid]
        alloc.waking.pop(rank, None)
        for gpu in self.pipelines[pid].bundles[rank]:
            if self.owner[gpu] == (pid, rank):
                self.owner.free((gpu,), (pid, rank))

    def _unreserve_grant(self, request: PendingRequest) -> None:
        cid = request.cluster_id
        for gpu in self.pipelines[request.pipeline_id].clusters[request.cluster].gpus:
            if self.owner[gpu] == cid:
                self.owner.free((gpu,), cid)
        request.move = None

    def _drop_request(self, request: PendingRequest) -> None:
        del self.pending[request.cluster_id]
        if request.move is not None:
            self._unreserve_grant(request)

    def _check_release(self, pid: str) -> None:
        release = self.planned_releases.get(pid)
        alloc = self.generation.get(pid)
        if release is None or alloc is None:
            return
        if release.drop_cluster:
            if alloc.idle_cluster:
                del self.planned_releases[pid]
                del self.generation[pid]
                self._events.append(ReleaseDone(pid))
        else:
            release.ranks &= {*alloc.active, *alloc.waking, *alloc.sleeping}
            if not release.ranks:
                del self.planned_releases[pid]
                self._events.append(ReleaseDone(pid))

    def _spec(self, pipeline_id: str, admitted: bool = True) -> PipelineSpec:
        spec = self.pipelines.get(pipeline_id)
        if spec is None:
            raise InvalidRequestError(f"unknown pipeline {pipeline_id!r}; register it first")
        if pipeline_id in self.fenced:
            raise PipelineGoneError(f"pipeline {pipeline_id!r} is fenced: {self.fenced[pipeline_id]}")
        if admitted and pipeline_id not in self.admitted:
            raise InvalidRequestError(f"pipeline {pipeline_id!r} is registered but not admitted")
        return spec

    @staticmethod
    def check_cluster(spec: PipelineSpec, cluster: str) -> str:
        """The cluster id of ``cluster`` of ``spec``, or InvalidRequestError naming the known ones."""
        if cluster not in spec.clusters:
            raise InvalidRequestError(
                f"pipeline {spec.pipeline_id!r} has no cluster {cluster!r}; registered: {sorted(spec.clusters)}"
            )
        return cluster_id(spec.pipeline_id, cluster)

    def _free_fixed(self, cid: str) -> None:
        alloc = self.fixed.pop(cid)
        self.owner.free(alloc.gpus, cid)
        self.stage_seen_at[alloc.pipeline_id] = self.clock()

    @staticmethod
    def _gen_gpus(spec: PipelineSpec, ranks: Iterable[int]) -> tuple[int, ...]:
        return tuple(sorted(gpu for rank in ranks for gpu in spec.bundles[rank]))


def _placement(pid: str, gpus: tuple[int, ...], stage_gpus: dict[int, set[str]]) -> int:
    others = False
    own = True
    for gpu in gpus:
        holders = stage_gpus.get(gpu)
        if not holders or pid not in holders:
            own = False
        if holders and holders - {pid}:
            others = True
    return 0 if own else (2 if others else 1)


def _contradiction(pid: str, ranks: set[int], waking: bool, outcome: ResizeOutcome) -> str | None:
    """Why an outcome does not confirm its call, or None when it does."""
    what = f"{'wake' if waking else 'sleep'} of DP ranks {sorted(ranks)}"
    if outcome.error is not None:
        return f"{what} failed: {outcome.error}"
    if outcome.awake is None:
        return (
            f"{what}: no rlix_resize_infer implementation answered for pipeline {pid!r}: "
            "the framework's hooks were never installed"
        )
    awake = set(outcome.awake)
    if waking and not ranks <= awake:
        return f"{what}: ranks {sorted(ranks - awake)} still asleep after wake (awake: {sorted(awake)})"
    if not waking and awake & ranks:
        return f"{what}: ranks {sorted(awake & ranks)} still awake after sleep"
    return None


__all__ = [
    "Event",
    "FixedAllocation",
    "Fenced",
    "GenerationAllocation",
    "MoveInFlight",
    "Owner",
    "PendingRequest",
    "PlannedRelease",
    "ReleaseDone",
    "RequestOutcome",
    "ResizeAction",
    "ResizeOutcome",
    "Satisfied",
    "SchedulerState",
]
