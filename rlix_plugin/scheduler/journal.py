"""The decision log: every committed change of the scheduler as a record with its cause.

:class:`Journal` is a :class:`~.observe.SchedulerObserver` that turns what the service reports --
plans, answered events, resize outcomes, registrations, changes of the open demand -- into
:class:`Decision` records kept in a bounded :class:`DecisionLog`. Pure: no I/O, the wall clock is
injected. What each kind of record means (``pipeline`` is the pipeline it concerns):

=================  ==================================================================================
``register``       the pipeline joined the pool (``detail.clusters``: its device mappings)
``unregister``     it left (``reason``: why -- by itself, an operator, its process died, a reclaim);
                   ``gpus``: what it still held
``demand_open``    a generation request wrote its open demand (``detail.step_target``)
``demand_retire``  its open demand ended (``reason``: the cluster was released, its last progress
                   stream ended, it was fenced)
``preempt``        its engines ``dp_ranks`` (on ``gpus``) are put to sleep for a stage
                   (``reason``: the planner's, ``preempted by <cluster id>``; ``detail.by``)
``donate``         its engines are put to sleep for another pipeline's (``donated to <pipeline>``;
                   ``detail.to``)
``sleep``          its engines are put to sleep for another reason the planner gives (``released``,
                   a weight sync would cost more than a sleep and a wake)
``wake``           its engines are to be woken (``idle GPUs``, or ``donated to <it>`` with
                   ``detail.from``, the donor)
``awake``          a wake confirmed by its engines (``detail.seconds``; ``reason``: the move's)
``asleep``         a sleep confirmed (``detail.seconds``; ``reason``: the move's)
``grant``          a request was granted: ``cluster``, ``gpus``, ``dp_ranks``; ``detail.priority``,
                   ``detail.waited_s``; for a stage ``reason`` says whose engines it preempted
``release``        a stage cluster was released (its GPUs are idle), or the generation workers it
                   gave back are asleep
``fence``          the pipeline was fenced (``reason``: the failure); ``gpus`` stay assigned to it
                   until it unregisters or is reclaimed; ``detail.cancelled``: its requests
=================  ==================================================================================

A decision (``preempt``, ``donate``, ``sleep``, ``wake``) is recorded when its move starts; the
engines' confirmation (``awake``, ``asleep``) or the pipeline's ``fence`` follows when they answer.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rlix_plugin.hookspecs import ACTOR_INFER

from .observe import ObserverBase
from .plan import Plan
from .state import Event, Fenced, ReleaseDone, ResizeAction, ResizeOutcome, Satisfied, SchedulerState
from .topology import cluster_id
from .trigger import PROGRESS

#: Decisions a journal keeps by default (the oldest are dropped first).
DECISIONS_KEPT = 10_000

REGISTER = "register"
UNREGISTER = "unregister"
DEMAND_OPEN = "demand_open"
DEMAND_RETIRE = "demand_retire"
PREEMPT = "preempt"
DONATE = "donate"
SLEEP = "sleep"
WAKE = "wake"
AWAKE = "awake"
ASLEEP = "asleep"
GRANT = "grant"
RELEASE = "release"
FENCE = "fence"
KINDS = (
    REGISTER,
    UNREGISTER,
    DEMAND_OPEN,
    DEMAND_RETIRE,
    PREEMPT,
    DONATE,
    SLEEP,
    WAKE,
    AWAKE,
    ASLEEP,
    GRANT,
    RELEASE,
    FENCE,
)


@dataclass(frozen=True)
class Decision:
    """One committed change and its cause (see the module docstring for each ``kind``)."""

    seq: int
    #: Wall-clock seconds since the epoch.
    t: float
    kind: str
    pipeline: str
    reason: str
    cluster: str | None = None
    dp_ranks: tuple[int, ...] = ()
    gpus: tuple[int, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain data (one JSON line of ``rlix-plugin events --json``)."""
        return {
            "seq": self.seq,
            "t": round(self.t, 6),
            "kind": self.kind,
            "pipeline": self.pipeline,
            "cluster": self.cluster,
            "dp_ranks": list(self.dp_ranks),
            "gpus": list(self.gpus),
            "reason": self.reason,
            "detail": dict(self.detail),
        }


def describe(decision: Mapping[str, Any]) -> str:
    """One line for an operator, from a decision's :meth:`Decision.to_json` form."""
    stamp = datetime.fromtimestamp(decision["t"]).strftime("%H:%M:%S.%f")[:-3]
    subject = decision["pipeline"] + (f" {decision['cluster']}" if decision.get("cluster") else "")
    if decision.get("dp_ranks"):
        subject += f" dp {decision['dp_ranks']}"
    if decision.get("gpus"):
        subject += f" GPUs {decision['gpus']}"
    detail = decision.get("detail") or {}
    extra = []
    for key, label in (
        ("step_target", "step target"),
        ("priority", "priority"),
        ("waited_s", "waited"),
        ("seconds", "took"),
        ("from", "from"),
        ("cancelled", "cancelled"),
    ):
        value = detail.get(key)
        if value not in (None, []):
            extra.append(f"{label} {value:.3f}s" if key in ("waited_s", "seconds") else f"{label} {value}")
    tail = f" ({', '.join(extra)})" if extra else ""
    return f"{stamp} #{decision['seq']:<5} {decision['kind']:<13} {subject}: {decision['reason']}{tail}"


class DecisionLog:
    """The last ``capacity`` decisions in order, numbered from 1 without gaps. ``listeners`` are
    called with each new decision (on the scheduler's loop: they must not block)."""

    def __init__(self, capacity: int = DECISIONS_KEPT) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self._items: deque[Decision] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self.listeners: list[Callable[[Decision], None]] = []

    def append(self, t: float, kind: str, pipeline: str, reason: str, **fields: Any) -> Decision:
        decision = Decision(next(self._seq), t, kind, pipeline, reason, **fields)
        self._items.append(decision)
        for listener in self.listeners:
            listener(decision)
        return decision

    @property
    def last_seq(self) -> int:
        """The newest decision's number (0 before the first)."""
        return self._items[-1].seq if self._items else 0

    @property
    def first_seq(self) -> int:
        """The oldest kept decision's number (earlier ones were dropped); 0 when empty."""
        return self._items[0].seq if self._items else 0

    def since(self, seq: int = 0, pipeline: str | None = None, limit: int | None = None) -> list[Decision]:
        """Decisions numbered above ``seq``, oldest first, of ``pipeline`` if given, at most
        ``limit`` of them."""
        if not self._items or seq >= self._items[-1].seq:
            return []
        start = max(0, seq + 1 - self._items[0].seq)
        picked = (d for d in itertools.islice(self._items, start, None) if pipeline is None or d.pipeline == pipeline)
        return list(itertools.islice(picked, limit))

    def tail(self, count: int, pipeline: str | None = None) -> list[Decision]:
        """The newest ``count`` decisions (of ``pipeline`` if given), oldest first."""
        picked: list[Decision] = []
        for decision in reversed(self._items):
            if len(picked) >= count:
                break
            if pipeline is None or decision.pipeline == pipeline:
                picked.append(decision)
        return picked[::-1]

    def __len__(self) -> int:
        return len(self._items)


class Journal(ObserverBase):
    """Records the decisions of the scheduler whose ``state`` it observes (module docstring)."""

    def __init__(
        self, state: SchedulerState, *, clock: Callable[[], float] = time.time, capacity: int = DECISIONS_KEPT
    ) -> None:
        self.state = state
        self.log = DecisionLog(capacity)
        self._clock = clock
        self._pipelines: set[str] = set()
        self._demand: dict[str, int] = {}
        #: Stage cluster id -> (pipeline, cluster, GPUs) of the grants recorded and not released.
        self._stages: dict[str, tuple[str, str, tuple[int, ...]]] = {}
        #: Stage cluster id -> the engines its move put to sleep.
        self._preempted_for: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        #: (move id, pipeline) -> the reason of the move, for its engines' confirmations.
        self._move_reasons: dict[tuple[int, str], str] = {}

    # -- the observer -------------------------------------------------------------------------------

    def changed(self, event: str, pipeline_id: str | None) -> None:
        if event == PROGRESS:
            return  # a progress report opens and retires nothing (an end that retires is its own event)
        state = self.state
        for pid in sorted(set(state.pipelines) - self._pipelines):
            spec = state.pipelines[pid]
            self._pipelines.add(pid)
            self._add(
                REGISTER,
                pid,
                "registered",
                detail={"clusters": {name: list(c.gpus) for name, c in sorted(spec.clusters.items())}},
            )
        self._pipelines &= set(state.pipelines)
        for pid, target in state.open_demand.items():
            if self._demand.get(pid) != target:
                self._demand[pid] = target
                self._add(DEMAND_OPEN, pid, "generation requested", cluster=ACTOR_INFER, detail={"step_target": target})
        for pid in [p for p in self._demand if p not in state.open_demand]:
            del self._demand[pid]
            if pid in state.pipelines:
                self._add(DEMAND_RETIRE, pid, self._retire_cause(pid, event), cluster=ACTOR_INFER)
        for cid in [c for c in self._stages if c not in state.fixed]:
            pid, cluster, gpus = self._stages.pop(cid)
            if pid in state.pipelines:
                self._add(RELEASE, pid, "released", cluster=cluster, gpus=gpus)

    def planned(self, plan: Plan | None, seconds: float) -> None:
        if plan is None:
            return
        flights = {id(f.move): f.id for f in self.state.moves.values()}
        for move in plan.moves:
            flight = flights.get(id(move))
            sleeps = {p: tuple(sorted(r)) for p, r in sorted(move.sleeps.items()) if r}
            wakes = {p: tuple(sorted(r)) for p, r in sorted(move.wakes.items()) if r}
            if flight is not None:
                for pid in {*sleeps, *wakes}:
                    self._move_reasons[(flight, pid)] = move.reason
            if move.grant is not None:
                self._preempted_for[move.grant] = list(sleeps.items())
                for pid, ranks in sleeps.items():
                    self._engines(PREEMPT, pid, ranks, move.reason, {"by": move.grant})
                continue
            donors = sorted(sleeps) if wakes else []
            for pid, ranks in sleeps.items():
                if wakes:
                    self._engines(DONATE, pid, ranks, move.reason, {"to": ", ".join(sorted(wakes))})
                else:
                    self._engines(SLEEP, pid, ranks, move.reason, {})
            for pid, ranks in wakes.items():
                self._engines(WAKE, pid, ranks, move.reason, {"from": ", ".join(donors)} if donors else {})

    def answered(self, events: Sequence[Event]) -> None:
        state = self.state
        for event in events:
            if isinstance(event, Satisfied):
                request = event.request
                waited = round(max(0.0, state.clock() - request.enqueued_at), 6)
                detail: dict[str, Any] = {"priority": request.priority, "waited_s": waited}
                if request.cluster == ACTOR_INFER:
                    gpus, ranks = state.gen_grant(request.pipeline_id)
                    self._add(
                        GRANT,
                        request.pipeline_id,
                        "an engine of it is awake",
                        cluster=request.cluster,
                        gpus=gpus,
                        dp_ranks=ranks,
                        detail=detail,
                    )
                    continue
                gpus = state.fixed_gpus(request.pipeline_id, request.cluster)
                victims = self._preempted_for.pop(request.cluster_id, [])
                reason = (
                    "after preempting " + "; ".join(f"{p} dp {list(r)}" for p, r in victims)
                    if victims
                    else "its GPUs were idle"
                )
                detail["preempted"] = {p: list(r) for p, r in victims}
                self._stages[request.cluster_id] = (request.pipeline_id, request.cluster, gpus)
                self._add(GRANT, request.pipeline_id, reason, cluster=request.cluster, gpus=gpus, detail=detail)
            elif isinstance(event, Fenced):
                self._add(
                    FENCE,
                    event.pipeline_id,
                    event.reason,
                    gpus=self._held(event.pipeline_id),
                    detail={"cancelled": [r.cluster_id for r in event.cancelled]},
                )
            elif isinstance(event, ReleaseDone):
                whole = event.pipeline_id not in state.generation
                self._add(
                    RELEASE,
                    event.pipeline_id,
                    "generation cluster released: its engines are asleep"
                    if whole
                    else "the generation workers it gave back are asleep",
                    cluster=ACTOR_INFER,
                )

    def resized(self, action: ResizeAction, outcome: ResizeOutcome) -> None:
        state, pid = self.state, action.pipeline_id
        reason = self._move_reasons.get((action.move, pid), "")
        if action.move not in state.moves:
            for key in [k for k in self._move_reasons if k[0] == action.move]:
                del self._move_reasons[key]
        if pid not in state.pipelines or pid in state.fenced:
            return  # gone meanwhile, or the outcome fenced it (its ``fence`` says why)
        ranks = action.add or action.remove
        self._engines(AWAKE if action.add else ASLEEP, pid, ranks, reason, {"seconds": round(outcome.seconds, 6)})

    def removing(self, pipeline_id: str, reason: str) -> None:
        self._add(UNREGISTER, pipeline_id, reason, gpus=self._held(pipeline_id))
        self._pipelines.discard(pipeline_id)
        self._demand.pop(pipeline_id, None)
        for cid in [c for c, entry in self._stages.items() if entry[0] == pipeline_id]:
            del self._stages[cid]
        prefix = cluster_id(pipeline_id, "")
        for cid in [c for c in self._preempted_for if c.startswith(prefix)]:
            del self._preempted_for[cid]

    # -- helpers ------------------------------------------------------------------------------------

    def _add(self, kind: str, pipeline: str, reason: str, **fields: Any) -> Decision:
        return self.log.append(self._clock(), kind, pipeline, reason, **fields)

    def _engines(self, kind: str, pid: str, ranks: Iterable[int], reason: str, detail: dict[str, Any]) -> None:
        ranks = tuple(sorted(ranks))
        spec = self.state.pipelines.get(pid)
        gpus = tuple(sorted(g for r in ranks for g in spec.bundles[r])) if spec is not None else ()
        self._add(kind, pid, reason, cluster=ACTOR_INFER, dp_ranks=ranks, gpus=gpus, detail=detail)

    def _retire_cause(self, pid: str, event: str) -> str:
        if pid in self.state.fenced:
            return f"fenced: {self.state.fenced[pid]}"
        return {
            "release": "its generation cluster was released",
            "demand retired": "its last progress stream ended",
        }.get(event, f"retired ({event})")

    def _held(self, pid: str) -> tuple[int, ...]:
        spec = self.state.pipelines.get(pid)
        if spec is None:
            return ()
        stages = {cluster_id(pid, name) for name in spec.clusters}
        return tuple(
            g
            for g, owner in enumerate(self.state.owner)
            if (type(owner) is tuple and owner[0] == pid) or owner in stages
        )


__all__ = ["DECISIONS_KEPT", "KINDS", "Decision", "DecisionLog", "Journal", "describe"]
