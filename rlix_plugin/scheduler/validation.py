"""Plan validation: fail fast, before anything is applied.

Checked on a copy of GPU ownership, in the order the plan is applied (shrinks, then grants, then
expands): no GPU in two places, idle and allocated GPUs together are exactly the pool, DP ranks
within bounds, only generation clusters shrink or expand, every referenced pipeline, cluster and
request exists, and no cluster is both granted and released in one plan.
"""

from __future__ import annotations

from rlix_plugin.hookspecs import ACTOR_INFER, PlanInvariantError

from .planner import Plan
from .state import SchedulerState
from .topology import cluster_id


def validate_plan(state: SchedulerState, plan: Plan, *, executed: bool = False) -> None:
    """Raise :class:`PlanInvariantError` naming the first broken invariant; return None if the
    plan may be applied to ``state``.

    ``executed=True`` validates a plan whose resizes already ran, at commit: a generation cluster
    released while its workers were being woken is then allowed (the release takes them next).
    """
    owner = list(state.owner)

    def fail(invariant: str, detail: str) -> None:
        raise PlanInvariantError(f"plan rejected, invariant '{invariant}' broken: {detail}")

    for pid, ranks in plan.shrinks.items():
        _check_generation(state, pid, ranks, fail)
        alloc = state.generation[pid]
        for rank in ranks:
            if rank not in alloc.active:
                fail("shrink only awake workers", f"{pid} DP rank {rank} is not awake")
            for gpu in state.pipelines[pid].bundles[rank]:
                if owner[gpu] != (pid, rank):
                    fail("no GPU in two places", f"GPU {gpu} is held by {owner[gpu]!r}, not {pid} rank {rank}")
                owner[gpu] = None

    granted: set[str] = set()
    for grant in plan.grants:
        request = state.pending.get(grant.cluster_id)
        if request is None:
            fail("referenced clusters exist", f"grant for {grant.cluster_id!r} without a pending request")
        assert request is not None
        if request.cluster == ACTOR_INFER:
            fail("only stages get fixed grants", f"{grant.cluster_id!r} is a generation cluster")
        if grant.cluster_id in granted or grant.cluster_id in state.fixed:
            fail("no cluster allocated twice", f"{grant.cluster_id!r} is already allocated")
        expected = state.pipelines[request.pipeline_id].clusters[request.cluster].gpus
        if tuple(grant.gpus) != tuple(expected):
            fail("fixed device mapping", f"{grant.cluster_id!r} granted {list(grant.gpus)}, mapping is {list(expected)}")
        for gpu in grant.gpus:
            if owner[gpu] is not None:
                fail("no GPU in two places", f"GPU {gpu} granted to {grant.cluster_id!r} is held by {owner[gpu]!r}")
            owner[gpu] = grant.cluster_id
        granted.add(grant.cluster_id)

    for pid, ranks in plan.expands.items():
        _check_generation(state, pid, ranks, fail)
        alloc = state.generation[pid]
        if not executed and pid in state.planned_releases and state.planned_releases[pid].drop_cluster:
            fail("no cluster both allocated and removed", f"{cluster_id(pid, ACTOR_INFER)!r} is being released")
        for rank in ranks:
            if rank in alloc.active and rank not in plan.shrinks.get(pid, ()):
                fail("expand only sleeping workers", f"{pid} DP rank {rank} is already awake")
            if rank in plan.shrinks.get(pid, ()):
                fail("no shrink and re-grant in one cycle", f"{pid} DP rank {rank}")
            for gpu in state.pipelines[pid].bundles[rank]:
                if owner[gpu] is not None:
                    fail("no GPU in two places", f"GPU {gpu} woken for {pid} rank {rank} is held by {owner[gpu]!r}")
                owner[gpu] = (pid, rank)

    idle_before = sum(1 for h in state.owner if h is None)
    freed = sum(len(state.pipelines[p].bundles[r]) for p, ranks in plan.shrinks.items() for r in ranks)
    taken = sum(len(g.gpus) for g in plan.grants) + sum(
        len(state.pipelines[p].bundles[r]) for p, ranks in plan.expands.items() for r in ranks
    )
    idle_after = sum(1 for h in owner if h is None)
    if idle_after != idle_before + freed - taken or len(owner) != state.pool.num_gpus:
        fail(
            "idle and allocated GPUs are the pool",
            f"{idle_before} idle + {freed} freed - {taken} taken != {idle_after} idle after",
        )


def check_state(state: SchedulerState) -> None:
    """Raise :class:`PlanInvariantError` if GPU ownership disagrees with the allocations (used by
    tests after every step, and cheap enough for a debug assertion)."""
    expected: list[object] = [None] * state.pool.num_gpus
    for cid, alloc in state.fixed.items():
        for gpu in alloc.gpus:
            if expected[gpu] is not None:
                raise PlanInvariantError(f"GPU {gpu} held by {expected[gpu]!r} and {cid!r}")
            expected[gpu] = cid
    for pid, gen in state.generation.items():
        for rank in gen.active:
            for gpu in state.pipelines[pid].bundles[rank]:
                if expected[gpu] is not None:
                    raise PlanInvariantError(f"GPU {gpu} held by {expected[gpu]!r} and {(pid, rank)!r}")
                expected[gpu] = (pid, rank)
    if expected != state.owner:
        diff = [g for g in range(state.pool.num_gpus) if expected[g] != state.owner[g]]
        raise PlanInvariantError(f"ownership table disagrees with allocations on GPUs {diff}")


def _check_generation(state: SchedulerState, pid: str, ranks: set[int], fail) -> None:  # type: ignore[no-untyped-def]
    spec = state.pipelines.get(pid)
    if spec is None:
        fail("referenced clusters exist", f"unknown pipeline {pid!r}")
    if pid not in state.generation:
        fail("only generation clusters shrink or expand", f"{cluster_id(pid, ACTOR_INFER)!r} is not held")
    bad = sorted(r for r in ranks if not 0 <= r < spec.dp_size)  # type: ignore[union-attr]
    if bad:
        fail("DP ranks within bounds", f"{pid} ranks {bad} outside 0..{spec.dp_size - 1}")  # type: ignore[union-attr]


__all__ = ["check_state", "validate_plan"]
