"""When to plan: the cycle-trigger policy, beside the planner. Pure.

Every change that can free or claim GPUs -- a request, a release, a registration, a move that
finished, demand opened or retired -- triggers a planning pass. Progress reports arrive often
(about 20 a second per pipeline) and rarely change a decision, so they trigger one only when the
policy says the allocation may now be wrong:

* ``gap_ratio``: a suspended generation cluster with demand, idle GPUs a pipeline with demand
  could use, or the least-complete half of the pipelines off its share by more than
  ``REBALANCE_DEVIATION`` (rlix's rule);
* switch-aware policies: the reporting pipeline now holds more bundles than samples it has left
  and another pipeline could take one (it has none, it has samples queued beyond what its bundles
  run, or the move costs nothing; O(pipelines), and a pass planned when none can gives nothing of
  the surplus), or it holds none while it has samples left (the starvation rule may give it one),
  or no pass ran for ``REVIEW_INTERVAL_S``:
  the payoff rule judges moves by measured rates, which change as progress arrives, so a move it
  turned down on an early estimate (engines left idle by a finished rollout, say) is reconsidered
  within that interval while anyone makes progress; at most one such pass per interval.

Time passing matters too: :func:`next_deadline` is when a minimum residency or an anticipation
runs out, so that the driver plans again then.
"""

from __future__ import annotations

import math

from .planner import ANTICIPATION_S, RESIDENCY_FACTOR, anticipated_gpus, generation_demand, queued_samples
from .policy import Policy
from .state import SchedulerState

#: Background rebalance threshold of ``gap_ratio``: share of remaining work of the least-complete
#: half of the pipelines versus their share of generation GPUs, in fractions.
REBALANCE_DEVIATION = 0.10

PROGRESS = "progress"
#: Longest time progress reports go without a planning pass under a switch-aware policy (seconds).
REVIEW_INTERVAL_S = 1.0


def wants_cycle(
    state: SchedulerState,
    policy: Policy,
    event: str,
    pipeline_id: str | None = None,
    *,
    durable_demand: bool = True,
    since_last_pass_s: float = 0.0,
) -> bool:
    """Whether ``event`` (``"progress"`` or any other change) of ``pipeline_id`` calls for a
    planning pass; ``since_last_pass_s``: seconds since the last one."""
    if event != PROGRESS:
        return True
    if policy.switch_aware:
        if pipeline_id is None:
            return False
        if since_last_pass_s >= REVIEW_INTERVAL_S:
            return True
        alloc = state.generation.get(pipeline_id)
        if alloc is None:
            return False
        remaining = state.remaining(pipeline_id)
        if alloc.held > remaining:
            return _could_take_from(state, pipeline_id, durable_demand)
        # Work left and no engine (a stage took them, or its count went back up): the starvation
        # rule may give it one now. Rare: a pipeline with no engine seldom makes progress.
        return not alloc.held and remaining > 0
    return needs_rebalance(state, durable_demand)


def _could_take_from(state: SchedulerState, donor: str, durable_demand: bool) -> bool:
    """Whether any other pipeline with demand could be given a bundle of ``donor`` by a planning
    pass now: one with no bundle (the starvation rule), one with samples queued beyond what its
    bundles run (the payoff rule's gain), or one for which the move costs nothing. When none can,
    a pass would plan nothing for the donor's surplus, however large it grows. O(pipelines)."""
    estimates, generation = state.estimates, state.generation
    sleep_s = estimates.sleep_s(donor)
    for pid, remaining in generation_demand(state, durable_demand).items():
        if pid == donor:
            continue
        held = generation[pid].held
        if not held:
            return True
        if queued_samples(state, pid, remaining, held) > 0 or sleep_s + estimates.wake_s(pid) <= 0:
            return True
    return False


def needs_rebalance(state: SchedulerState, durable_demand: bool = True) -> bool:
    """``gap_ratio``'s rule (see the module docstring)."""
    if state.pending or state.planned_releases:
        return True
    demand = generation_demand(state, durable_demand)
    if not demand:
        return False
    if any(not state.generation[pid].held for pid in demand):
        return True
    if _idle_bundle_for(state, demand):
        return True
    return _share_deviation(state, demand) > REBALANCE_DEVIATION


class ResidencyMemo:
    """What :func:`next_deadline` found per pipeline -- the earliest wake whose residency is still
    running -- kept between calls so that it is not searched for again while it stands.

    A remembered wake ``w`` (of rank ``r``, found at ``t`` for residency length ``L``) is still
    the answer at ``now >= t`` when ``r`` is still awake since ``w``, ``L`` is unchanged and
    ``w + L > now``: every wake recorded since is at or after ``t`` (wakes are stamped with the
    clock), hence not earlier than ``w``, and wakes that ended only leave the candidates.

    That no residency was running at ``t`` still holds at ``now >= t`` (same ``L``) when no wake
    was recorded since: the table keeps insertion order, so a wake recorded since would be its
    last entry, stamped at or after ``t``; a last entry stamped before ``t`` means there is none."""

    __slots__ = ("found",)

    def __init__(self) -> None:
        #: pipeline -> (its awake_since table, rank, wake, residency length, found at); rank -1 and
        #: wake -inf when no residency was running.
        self.found: dict[str, tuple[dict[int, float], int, float, float, float]] = {}


def next_deadline(state: SchedulerState, policy: Policy, now: float, memo: ResidencyMemo | None = None) -> float | None:
    """The next moment a switch-aware rule stops holding a bundle back, or None.

    ``memo``: a :class:`ResidencyMemo` the caller keeps across calls on one state (the result is
    the same with or without)."""
    if not policy.switch_aware:
        return None
    _, deadline = anticipated_gpus(state, now)
    found = memo.found if memo is not None else None
    generation, estimates = state.generation, state.estimates
    for pid in state.open_demand:  # the earliest end is the same in any order
        alloc = generation.get(pid)
        if alloc is None or not alloc.awake_since:
            continue
        residency = RESIDENCY_FACTOR * estimates.switch_s(pid)
        if residency <= 0:
            continue
        # The earliest residency still running: ends grow with wake times, so take the earliest
        # wake whose end is still ahead.
        since = alloc.awake_since
        woke: float | None = None
        known = found.get(pid) if found is not None else None
        if known is not None and known[0] is since and known[3] == residency and known[4] <= now:
            if known[1] < 0:
                # None was running; still none unless a wake was recorded since.
                if since[next(reversed(since))] < known[4]:
                    continue
            elif known[2] + residency > now and since.get(known[1]) == known[2]:
                woke = known[2]
        if woke is None:
            rank = -1
            for r, w in since.items():
                if w + residency > now and (woke is None or w < woke):
                    rank, woke = r, w
            if found is not None:
                found[pid] = (since, rank, -math.inf if woke is None else woke, residency, now)
        if woke is not None:
            end = woke + residency
            if deadline is None or end < deadline:
                deadline = end
    return deadline


def _idle_bundle_for(state: SchedulerState, demand: dict[str, int]) -> bool:
    owner = state.owner
    idle = owner.idle()
    if not idle:
        return False
    for pid in demand:
        spec = state.pipelines[pid]
        for gpu in idle:
            rank = spec.rank_of_gpu.get(gpu)
            if rank is not None and owner.all_idle(spec.bundles[rank]):
                return True
    return False


def _share_deviation(state: SchedulerState, demand: dict[str, int]) -> float:
    """|remaining-work share - GPU share| of the least-complete half of the pipelines."""
    pipelines = state.pipelines
    weights = {pid: demand[pid] * pipelines[pid].tp for pid in demand}
    gpus = {pid: state.generation[pid].held * pipelines[pid].tp for pid in demand}
    total_weight, total_gpus = sum(weights.values()), sum(gpus.values())
    if not total_weight or not total_gpus:
        return 0.0

    def completion(pid: str) -> float:
        return 1.0 - demand[pid] / max(state.demand.step_target(pid), 1)

    half = sorted(demand, key=lambda p: (completion(p), p))[: max(1, len(demand) // 2)]
    return abs(sum(weights[p] for p in half) / total_weight - sum(gpus[p] for p in half) / total_gpus)


__all__ = [
    "ANTICIPATION_S",
    "ResidencyMemo",
    "PROGRESS",
    "REBALANCE_DEVIATION",
    "REVIEW_INTERVAL_S",
    "needs_rebalance",
    "next_deadline",
    "wants_cycle",
]
