"""Sharing policies: how the generation bundles are divided among pipelines with demand.

A policy turns, per pipeline with demand, its remaining samples into a target number of
generation bundles; the planner (:mod:`.planner`) then moves bundles toward the targets. Two are
built in (``policy = "..."`` in a scenario, ``policy=`` on a backend):

``gap_ratio``
    rlix's rule: the generation GPUs are shared in proportion to ``remaining x tp``; every
    pipeline with demand gets at least one bundle when one can be freed; every move toward the
    targets is made as soon as it is planned, whatever a switch costs.

``finish_first`` (the default)
    Each pipeline with demand is entitled to its static share of the pool -- the slice a static
    partition would give it -- and never gets more bundles than samples it has left; what
    entitled pipelines do not use (their rollout's tail, their training) goes first to the
    pipeline closest to the end of its rollout, so that its training overlaps the others'
    rollouts instead of all pipelines rolling out, then training, in lockstep. Moves are
    switch-cost aware (see :mod:`.planner`): a bundle moves only when the move pays, a woken
    bundle stays for a minimum residency, the GPUs of a stage that usually follows a rollout are
    kept for it, and engines are placed on the GPUs their own pipeline's stages will take.

Both guarantee that a pipeline with demand gets one bundle when one can be freed (the planner's
starvation rule ignores residency and payoff; see the bound in :mod:`.planner`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from rlix_plugin.hookspecs import InvalidRequestError


@dataclass(frozen=True)
class TargetInputs:
    """What a policy sees: per pipeline with demand, its remaining samples, TP size, how many
    bundles it could hold at most right now, and its measured engine-seconds per sample."""

    demand: Mapping[str, int]
    tp: Mapping[str, int]
    max_bundles: Mapping[str, int]
    sample_s: Mapping[str, float | None]
    #: GPUs generation may use now (the pool minus stages and fenced pipelines).
    capacity: int
    num_gpus: int
    #: Pipelines sharing the pool (registered, not fenced), with or without demand.
    sharing: int
    #: Rollouts each pipeline with demand has started.
    rollouts: Mapping[str, int]
    #: Declared quotas: bundles guaranteed while it has demand, and the most it may hold.
    min_bundles: Mapping[str, int]
    max_bundles_quota: Mapping[str, int | None]


@dataclass(frozen=True)
class Policy:
    name: str
    #: Apply the switch-cost rules (payoff, residency, anticipation, placement).
    switch_aware: bool
    #: Entitle each pipeline to its static share before anything else is divided.
    entitled: bool
    #: How the rest is divided: "proportional" (remaining x tp) or "closest_first".
    leftover: str
    #: Never give a pipeline more bundles than samples it has left.
    capped: bool

    def targets(self, inputs: TargetInputs) -> tuple[dict[str, int], dict[str, float]]:
        """Integer bundle targets and the fractional ideal behind them."""
        return _targets(self, inputs)


GAP_RATIO = Policy("gap_ratio", switch_aware=False, entitled=False, leftover="proportional", capped=False)
FINISH_FIRST = Policy("finish_first", switch_aware=True, entitled=True, leftover="closest_first", capped=True)

POLICIES: dict[str, Policy] = {p.name: p for p in (GAP_RATIO, FINISH_FIRST)}
DEFAULT_POLICY = FINISH_FIRST.name


def get_policy(name: object) -> Policy:
    """The policy called ``name`` (a :class:`Policy` passes through).

    :raises InvalidRequestError: an unknown name, listing the known ones.
    """
    if isinstance(name, Policy):
        return name
    policy = POLICIES.get(name) if isinstance(name, str) else None
    if policy is None:
        raise InvalidRequestError(f"unknown sharing policy {name!r}; known: {', '.join(POLICIES)}")
    return policy


def _targets(policy: Policy, inputs: TargetInputs) -> tuple[dict[str, int], dict[str, float]]:
    demand, tp, reach = inputs.demand, inputs.tp, inputs.max_bundles
    weight = {pid: demand[pid] * tp[pid] for pid in demand}
    total_weight = sum(weight.values())
    capacity = inputs.capacity
    if not total_weight or capacity <= 0:
        return {}, {}
    cap = {pid: min(reach[pid], demand[pid]) if policy.capped else reach[pid] for pid in demand}
    for pid in demand:
        quota = inputs.max_bundles_quota.get(pid)
        if quota is not None:
            cap[pid] = min(cap[pid], quota)
    target = dict.fromkeys(demand, 0)
    budget = capacity

    def give(pid: str, bundles: int) -> int:
        nonlocal budget
        bundles = min(bundles, cap[pid] - target[pid], budget // tp[pid])
        if bundles > 0:
            target[pid] += bundles
            budget -= bundles * tp[pid]
            return bundles
        return 0

    if policy.leftover in ("closest_first", "farthest_first"):
        # Remaining work in GPU-seconds when every pipeline's sample time is measured, else in
        # samples x TP: one unit for all, so that the order compares like with like.
        timed = all(inputs.sample_s.get(p) for p in demand)
        work = {p: weight[p] * (inputs.sample_s[p] or 1.0) if timed else float(weight[p]) for p in demand}
        sign = 1 if policy.leftover == "closest_first" else -1
        order = sorted(demand, key=lambda p: (sign * work[p], p))
    elif policy.leftover == "behind_first":
        timed = all(inputs.sample_s.get(p) for p in demand)
        work = {p: weight[p] * (inputs.sample_s[p] or 1.0) if timed else float(weight[p]) for p in demand}
        order = sorted(demand, key=lambda p: (inputs.rollouts.get(p, 0), -work[p], p))
    else:
        order = sorted(demand, key=lambda p: (-weight[p], p))
    # Its guaranteed bundles (one, unless its quota says otherwise) for every pipeline with
    # demand, in order when there are not enough.
    if policy.leftover != "proportional":
        # give() written out, one round per loop: this runs in every planning pass.
        min_bundles = inputs.min_bundles
        for pid in order:
            size, held = tp[pid], target[pid]
            bundles = min(min_bundles.get(pid, 1), cap[pid] - held, budget // size)
            if bundles > 0:
                target[pid] = held + bundles
                budget -= bundles * size
        if policy.entitled:
            share = inputs.num_gpus // max(1, inputs.sharing)
            for pid in order:
                size, held = tp[pid], target[pid]
                bundles = min(share // size - held, cap[pid] - held, budget // size)
                if bundles > 0:
                    target[pid] = held + bundles
                    budget -= bundles * size
        for pid in order:
            if budget <= 0:
                break
            size, held = tp[pid], target[pid]
            bundles = min(cap[pid] - held, budget // size)
            if bundles > 0:
                target[pid] = held + bundles
                budget -= bundles * size
        return target, {pid: float(target[pid]) for pid in demand}
    ideal = {pid: capacity * weight[pid] / total_weight / tp[pid] for pid in demand}
    for pid in order:
        give(pid, inputs.min_bundles.get(pid, 1))
    if policy.entitled:
        # Up to its static share: the slice a static partition would give it.
        share = inputs.num_gpus // max(1, inputs.sharing)
        for pid in order:
            give(pid, share // tp[pid] - target[pid])
    for pid in order:
        give(pid, max(0, math.floor(ideal[pid]) - target[pid]) if target[pid] > 0 else 0)
    # Leftover capacity by largest remainder, round after round, so no GPU idles while a
    # pipeline with demand could use it.
    while budget > 0:
        takers = [p for p in demand if 0 < target[p] < cap[p] and tp[p] <= budget]
        if not takers:
            break
        takers.sort(key=lambda p: (-(ideal[p] - target[p]), p))
        for pid in takers:
            give(pid, 1)
    return target, ideal


__all__ = ["DEFAULT_POLICY", "FINISH_FIRST", "GAP_RATIO", "POLICIES", "Policy", "TargetInputs", "get_policy"]
