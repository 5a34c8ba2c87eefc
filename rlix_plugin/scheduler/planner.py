"""One scheduling cycle, planned: pure, reads a :class:`SchedulerState`, returns a :class:`Plan`.

Order (DESIGN.md section 5): planned releases -> stages 0-5 in priority order, each on its fixed
device mapping, preempting generation workers there -> generation gap ratio.

Gap ratio: among pipelines with demand, the target share of the generation GPUs is proportional to
``remaining x tp``; every pipeline with demand gets at least one bundle when one can be freed
(largest weight first when there are not enough). Receivers (below target) take idle bundles
first, then bundles of donors (above target): pipelines without demand first, then the donor with
the most remaining work. Receivers with no worker go first. A receiver never takes a rank it lost
earlier in the same cycle, and donors and receivers are disjoint, so the number of generation
moves never exceeds the distance between the current and the target allocation.

Work is in counts per pipeline and per-donor queues: a cycle costs O(GPUs + pipelines log
pipelines + moves x tp), never pipelines x GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlix_plugin.hookspecs import ACTOR_INFER, Priority

from .state import SchedulerState
from .topology import cluster_id


@dataclass(frozen=True)
class FixedGrant:
    """A pending stage request granted its device mapping."""

    cluster_id: str
    gpus: tuple[int, ...]


@dataclass
class Plan:
    """What one cycle changes. Shrinks are applied before grants and expands."""

    grants: list[FixedGrant] = field(default_factory=list)
    shrinks: dict[str, set[int]] = field(default_factory=dict)
    expands: dict[str, set[int]] = field(default_factory=dict)
    #: Why each (pipeline, rank) is shrunk: "released", "preempted by X", "donated to Y", "no demand".
    reasons: dict[tuple[str, int], str] = field(default_factory=dict)
    #: Generation target in bundles per pipeline considered, and the fractional ideal behind it.
    targets: dict[str, int] = field(default_factory=dict)
    ideal: dict[str, float] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.grants or self.shrinks or self.expands)

    @property
    def activations(self) -> int:
        return sum(len(r) for r in self.expands.values())

    @property
    def shrink_count(self) -> int:
        return sum(len(r) for r in self.shrinks.values())


def generation_demand(state: SchedulerState, durable_demand: bool = True) -> dict[str, int]:
    """Remaining samples of every pipeline the generation planner should serve.

    ``durable_demand=False`` reproduces the semantics before the open-demand registry existed
    (demand visible only while a generation request is pending, or through progress of a pipeline
    that still has an awake worker). It exists for tests that show the old race; never use it.
    """
    demand: dict[str, int] = {}
    for pid, alloc in state.generation.items():
        if pid in state.fenced or pid in state.planned_releases:
            continue
        if durable_demand:
            remaining = state.remaining(pid)
        else:
            pending = state.pending.get(cluster_id(pid, ACTOR_INFER))
            if pending is not None:
                remaining = pending.step_target or 0
            elif alloc.active:
                streams = state.progress.get(pid, {})
                remaining = sum(s.step_target - s.completed for s in streams.values())
            else:
                remaining = 0
        if remaining > 0:
            demand[pid] = remaining
    return demand


class _Cycle:
    """Scratch space of one planning pass (a copy of ownership and awake ranks)."""

    def __init__(self, state: SchedulerState) -> None:
        self.state = state
        self.owner = list(state.owner)
        self.active = {pid: set(alloc.active) for pid, alloc in state.generation.items()}
        self.lost: dict[str, set[int]] = {}
        self.plan = Plan()

    def shrink(self, pid: str, rank: int, reason: str) -> None:
        for gpu in self.state.pipelines[pid].bundles[rank]:
            self.owner[gpu] = None
        self.active[pid].discard(rank)
        self.lost.setdefault(pid, set()).add(rank)
        self.plan.shrinks.setdefault(pid, set()).add(rank)
        self.plan.reasons[(pid, rank)] = reason

    def expand(self, pid: str, rank: int) -> None:
        for gpu in self.state.pipelines[pid].bundles[rank]:
            self.owner[gpu] = (pid, rank)
        self.active[pid].add(rank)
        self.plan.expands.setdefault(pid, set()).add(rank)


def plan_cycle(state: SchedulerState, *, durable_demand: bool = True) -> Plan:
    """Plan one scheduling cycle from ``state`` (which is not modified)."""
    cycle = _Cycle(state)
    fenced = state.fenced

    for pid in sorted(state.planned_releases):
        for rank in sorted(state.planned_releases[pid].ranks & cycle.active.get(pid, set())):
            cycle.shrink(pid, rank, "released")

    stage_requests = sorted(
        (r for r in state.pending.values() if r.priority < Priority.GENERATION),
        key=lambda r: (r.priority, r.seq),
    )
    for request in stage_requests:
        gpus = state.pipelines[request.pipeline_id].clusters[request.cluster].gpus
        holders = [cycle.owner[g] for g in gpus]
        # A stage never preempts another stage, nor a fenced pipeline's engines (their release
        # cannot be trusted): it waits.
        if any(type(h) is str or (type(h) is tuple and h[0] in fenced) for h in holders):
            continue
        for pid, rank in sorted({h for h in holders if h is not None}):  # type: ignore[misc]
            cycle.shrink(pid, rank, f"preempted by {request.cluster_id}")
        for gpu in gpus:
            cycle.owner[gpu] = request.cluster_id
        cycle.plan.grants.append(FixedGrant(request.cluster_id, gpus))

    _plan_generation(cycle, generation_demand(state, durable_demand))
    return cycle.plan


def _targets(
    cycle: _Cycle, demand: dict[str, int]
) -> tuple[dict[str, int], dict[str, float], dict[str, int]]:
    """Integer bundle targets, fractional ideals, and the most bundles each pipeline with demand
    could hold (bundles not blocked by a stage or a fenced pipeline)."""
    state, owner, fenced = cycle.state, cycle.owner, cycle.state.fenced
    pipelines = state.pipelines
    blocked_gpus = [g for g, h in enumerate(owner) if type(h) is str or (type(h) is tuple and h[0] in fenced)]
    capacity = len(owner) - len(blocked_gpus)
    max_bundles: dict[str, int] = {}
    for pid in demand:
        spec = pipelines[pid]
        blocked = {spec.rank_of_gpu[g] for g in blocked_gpus if g in spec.rank_of_gpu}
        max_bundles[pid] = spec.dp_size - len(blocked)
    weight = {pid: demand[pid] * pipelines[pid].tp for pid in demand}
    total_weight = sum(weight.values())
    if not total_weight or capacity <= 0:
        return {}, {}, max_bundles
    ideal = {pid: capacity * weight[pid] / total_weight / pipelines[pid].tp for pid in demand}

    target = {pid: 0 for pid in demand}
    budget = capacity
    by_weight = sorted(demand, key=lambda p: (-weight[p], p))
    # At least one bundle for every pipeline with demand, largest weight first when short.
    for pid in by_weight:
        tp = pipelines[pid].tp
        if max_bundles[pid] >= 1 and tp <= budget:
            target[pid] = 1
            budget -= tp
    # Then the proportional part, rounded down, within caps and the budget.
    for pid in by_weight:
        tp = pipelines[pid].tp
        extra = min(max(0, math.floor(ideal[pid]) - target[pid]), max_bundles[pid] - target[pid], budget // tp)
        if extra > 0 and target[pid] > 0:
            target[pid] += extra
            budget -= extra * tp
    # Leftover capacity goes by largest remainder, round after round, so no GPU idles while a
    # pipeline with demand could use it.
    while budget > 0:
        takers = [p for p in demand if 0 < target[p] < max_bundles[p] and pipelines[p].tp <= budget]
        if not takers:
            break
        takers.sort(key=lambda p: (-(ideal[p] - target[p]), p))
        for pid in takers:
            tp = pipelines[pid].tp
            if tp <= budget:
                target[pid] += 1
                budget -= tp
    return target, ideal, max_bundles


def _plan_generation(cycle: _Cycle, demand: dict[str, int]) -> None:
    state, plan = cycle.state, cycle.plan
    fenced = state.fenced
    target, ideal, max_bundles = _targets(cycle, demand)
    for pid in cycle.active:
        if pid not in fenced and pid not in state.planned_releases:
            target.setdefault(pid, 0)
    plan.targets, plan.ideal = target, ideal
    count = {pid: len(cycle.active[pid]) for pid in target}
    # Donors: pipelines without demand first (their engines are idle), then the one with the most
    # remaining work; ties by id. Each gives at most its surplus.
    donors = sorted(
        (p for p in target if count[p] > target[p]),
        key=lambda p: (p in demand, -demand.get(p, 0), p),
    )
    surplus = {p: count[p] - target[p] for p in donors}
    queues = {p: sorted(cycle.active[p]) for p in donors}
    idle = [g for g, h in enumerate(cycle.owner) if h is None]

    receivers = sorted(
        (p for p in target if count[p] < target[p]),
        key=lambda p: (count[p] > 0, -(target[p] - count[p]) / target[p], p),
    )
    for first_round in (True, False):
        for pid in receivers:
            want = (1 if count[pid] == 0 else 0) if first_round else target[pid] - count[pid]
            if want <= 0:
                continue
            got = _take_idle(cycle, pid, want, idle)
            if got < want:
                got += _take_from_donors(cycle, pid, want - got, donors, surplus, queues)
            count[pid] += got
        idle = [g for g in idle if cycle.owner[g] is None]

    # Work-conserving pass. Targets come from a pool-wide GPU count, so for a given mapping they
    # can be out of reach (a pipeline whose only bundle a peer holds at its minimum). Capacity left
    # that way goes to pipelines with demand that can use it: idle bundles, and for a pipeline
    # with no worker, the engines of pipelines without demand. Targets are raised to match, so
    # they stay the allocation this plan moves toward.
    idle_donors = [p for p in donors if p not in demand]
    for pid in sorted(demand, key=lambda p: (count.get(p, 0) > 0, -demand[p], p)):
        if pid not in count:
            continue
        got = _take_idle(cycle, pid, max_bundles[pid] - count[pid], idle) if idle else 0
        if count[pid] + got == 0:
            got += _take_from_donors(cycle, pid, 1, idle_donors, surplus, queues)
        if got:
            count[pid] += got
            target[pid] = max(target[pid], count[pid])
            idle = [g for g in idle if cycle.owner[g] is None]


def _bundle_free(cycle: _Cycle, pid: str, rank: int) -> bool:
    if rank in cycle.active[pid] or rank in cycle.lost.get(pid, ()):
        return False
    owner = cycle.owner
    return all(owner[g] is None for g in cycle.state.pipelines[pid].bundles[rank])


def _take_idle(cycle: _Cycle, pid: str, want: int, idle: list[int]) -> int:
    rank_of_gpu = cycle.state.pipelines[pid].rank_of_gpu
    got = 0
    if want <= 0:
        return 0
    for gpu in idle:
        rank = rank_of_gpu.get(gpu)
        if rank is not None and cycle.owner[gpu] is None and _bundle_free(cycle, pid, rank):
            cycle.expand(pid, rank)
            got += 1
            if got == want:
                break
    return got


def _take_from_donors(
    cycle: _Cycle,
    pid: str,
    want: int,
    donors: list[str],
    surplus: dict[str, int],
    queues: dict[str, list[int]],
) -> int:
    spec = cycle.state.pipelines[pid]
    rank_of_gpu, bundles = spec.rank_of_gpu, spec.bundles
    active, lost = cycle.active[pid], cycle.lost.get(pid, ())
    got = 0
    for donor in donors:
        queue = queues[donor]
        donor_bundles = cycle.state.pipelines[donor].bundles
        donor_active = cycle.active[donor]
        skipped: list[int] = []
        while got < want and surplus[donor] > 0 and queue:
            worker = queue.pop()
            if worker not in donor_active:
                continue  # already taken this cycle
            worker_gpus = donor_bundles[worker]
            rank = rank_of_gpu.get(worker_gpus[0])
            if rank is not None and bundles[rank] == worker_gpus and rank not in active and rank not in lost:
                # Same bundle in both mappings (the common case): exactly this worker moves.
                cycle.shrink(donor, worker, f"donated to {pid}")
                surplus[donor] -= 1
                cycle.expand(pid, rank)
                got += 1
                continue
            # The receiver's bundles that overlap this worker (TP sizes or offsets differ).
            victims = None
            for gpu in worker_gpus:
                rank = rank_of_gpu.get(gpu)
                if rank is not None:
                    victims = _victims(cycle, pid, rank, surplus)
                    if victims is not None:
                        break
            if victims is None:
                skipped.append(worker)
                continue
            for victim_pid, victim_rank in victims:
                cycle.shrink(victim_pid, victim_rank, f"donated to {pid}")
                surplus[victim_pid] -= 1
            cycle.expand(pid, rank)
            got += 1
        queue.extend(reversed(skipped))
        if got == want:
            break
    return got


def _victims(
    cycle: _Cycle, pid: str, rank: int, surplus: dict[str, int]
) -> list[tuple[str, int]] | None:
    """Donor workers to shrink so that ``pid`` can wake ``rank``, or None if that bundle cannot
    be freed (a GPU held by a stage, a receiver, or a donor without surplus left)."""
    if rank in cycle.active[pid] or rank in cycle.lost.get(pid, ()):
        return None
    victims: dict[tuple[str, int], None] = {}
    for gpu in cycle.state.pipelines[pid].bundles[rank]:
        holder = cycle.owner[gpu]
        if holder is None:
            continue
        if type(holder) is not tuple or holder[0] not in surplus:
            return None
        victims[holder] = None  # type: ignore[index]
    need: dict[str, int] = {}
    for victim_pid, _ in victims:
        need[victim_pid] = need.get(victim_pid, 0) + 1
    if any(surplus[p] < n for p, n in need.items()):
        return None
    return list(victims)  # type: ignore[arg-type]


__all__ = ["FixedGrant", "Plan", "generation_demand", "plan_cycle"]
