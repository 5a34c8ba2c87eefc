"""Plan validation: fail fast, before anything starts.

A plan is replayed move by move on a copy of the ownership table (:class:`~.ownership.Ownership`
checks every hand-over): only awake engines not already in transition are put to sleep; a wake or
a grant lands only on GPUs that are idle or freed by its own move's sleeps; no GPU ends in two
places; idle and allocated GPUs together are exactly the pool; DP ranks are within bounds; only
generation clusters sleep or wake; every referenced pipeline, cluster and request exists; no
cluster is granted twice or woken while it is being released.
"""

from __future__ import annotations

from typing import NoReturn

from rlix_plugin.hookspecs import ACTOR_INFER, PlanInvariantError

from .ownership import Ownership, describe
from .plan import Plan
from .state import SchedulerState
from .topology import cluster_id


def _fail(invariant: str, detail: str) -> NoReturn:
    raise PlanInvariantError(f"plan rejected, invariant '{invariant}' broken: {detail}")


def validate_plan(state: SchedulerState, plan: Plan) -> None:
    """Raise :class:`PlanInvariantError` naming the first broken invariant; return None if the
    plan may be started on ``state``.

    Each move's sleeps and wakes are checked a pipeline at a time with set operations; when one
    fails, that pipeline's ranks are checked one by one to name the first bad rank."""
    owner = state.owner.copy()
    idle_before = owner.count_idle()
    freed = taken = taken_freed = 0
    sleeping: dict[str, set[int]] = {}
    waking: dict[str, set[int]] = {}
    granted: set[str] = set()
    for index, move in enumerate(plan.moves):
        freed_here = _Freed(index)  # GPUs this move frees: only its own targets may take them
        for pid, ranks in move.sleeps.items():
            _check_generation(state, pid, ranks)
            alloc = state.generation[pid]
            done = sleeping.setdefault(pid, set())
            if not ranks <= alloc.active or not done.isdisjoint(ranks):
                for rank in ranks:  # one by one, in order, to name the first failure
                    if rank not in alloc.active or rank in done:
                        _fail("sleep only awake workers", f"{pid} DP rank {rank} is not awake (or already moving)")
                    done.add(rank)
                    owner.hand_over(state.pipelines[pid].bundles[rank], (pid, rank), freed_here)  # type: ignore[arg-type]
            done |= ranks
            freed += owner.vacate(pid, ranks, state.pipelines[pid].bundles, freed_here)
        if move.grant is not None:
            request = state.pending.get(move.grant)
            if request is None:
                _fail("referenced clusters exist", f"grant for {move.grant!r} without a pending request")
            if request.cluster == ACTOR_INFER:
                _fail("only stages get fixed grants", f"{move.grant!r} is a generation cluster")
            if move.grant in granted or move.grant in state.fixed or request.move is not None:
                _fail("no cluster allocated twice", f"{move.grant!r} is already allocated (or being granted)")
            expected = state.pipelines[request.pipeline_id].clusters[request.cluster].gpus
            if tuple(move.grant_gpus) != tuple(expected):
                _fail(
                    "fixed device mapping",
                    f"{move.grant!r} granted {list(move.grant_gpus)}, mapping is {list(expected)}",
                )
            taken_freed += _land(owner, move.grant_gpus, move.grant, freed_here)
            granted.add(move.grant)
            taken += len(move.grant_gpus)
        for pid, ranks in move.wakes.items():
            _check_generation(state, pid, ranks)
            alloc = state.generation[pid]
            release = state.planned_releases.get(pid)
            if release is not None and release.drop_cluster:
                _fail("no cluster both allocated and removed", f"{cluster_id(pid, ACTOR_INFER)!r} is being released")
            asleep = sleeping.get(pid, set())
            woken = waking.setdefault(pid, set())
            if not (
                ranks.isdisjoint(asleep)
                and ranks.isdisjoint(alloc.active)
                and ranks.isdisjoint(woken)
                and alloc.waking.keys().isdisjoint(ranks)
                and alloc.sleeping.keys().isdisjoint(ranks)
            ):
                for rank in ranks:  # one by one, in order, to name the first failure
                    if rank in asleep:
                        _fail("no sleep and wake of one rank in one plan", f"{pid} DP rank {rank}")
                    if rank in alloc.active or rank in alloc.waking or rank in alloc.sleeping or rank in woken:
                        _fail("wake only sleeping workers", f"{pid} DP rank {rank} is awake or already moving")
                    woken.add(rank)
                    _land(owner, state.pipelines[pid].bundles[rank], (pid, rank), freed_here)
            woken |= ranks
            got, from_freed, clash = owner.occupy(pid, ranks, state.pipelines[pid].bundles, freed_here)
            if clash is not None:
                gpu, holder, current = clash
                _fail("no GPU in two places", f"GPU {gpu} wanted by {describe(holder)} is held by {describe(current)}")
            taken += got
            taken_freed += from_freed
    # Every GPU a move froze and no target took is still marked freed: it counts as idle.
    idle_after = owner.count_idle() + freed - taken_freed
    if idle_after != idle_before + freed - taken or len(owner) != state.pool.num_gpus:
        _fail(
            "idle and allocated GPUs are the pool",
            f"{idle_before} idle + {freed} freed - {taken} taken != {idle_after} idle after",
        )


class _Freed:
    """Replay marker: a GPU freed by move ``index`` of the plan, not yet taken by its target."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"an engine falling asleep in move {self.index}"


def _land(owner: Ownership, gpus: tuple[int, ...], holder: object, freed_here: _Freed) -> int:
    """A target takes GPUs that are idle now, or that its own move frees; returns how many of
    them its move freed."""
    from_freed = 0
    for gpu in gpus:
        current = owner[gpu]
        if current is not None:
            if current is not freed_here:
                _fail("no GPU in two places", f"GPU {gpu} wanted by {describe(holder)} is held by {describe(current)}")  # type: ignore[arg-type]
            from_freed += 1
        owner.set((gpu,), holder)  # type: ignore[arg-type]
    return from_freed


def check_state(state: SchedulerState) -> None:
    """Raise :class:`PlanInvariantError` if GPU ownership disagrees with the allocations and the
    moves in flight (used by tests after every step, and cheap enough for a debug assertion).

    Each GPU has at most one physical holder (a fixed allocation, or an engine that is awake,
    falling asleep, or whose wake was issued); the table names that holder, or -- for a GPU no
    engine or stage holds -- the target a started move reserved it for, or nobody.
    """
    num = state.pool.num_gpus
    physical: list[object] = [None] * num
    reserved: list[object] = [None] * num

    def put(table: list[object], gpus: tuple[int, ...], holder: object, what: str) -> None:
        for gpu in gpus:
            if table[gpu] is not None:
                raise PlanInvariantError(f"GPU {gpu} {what} by {table[gpu]!r} and {holder!r}")
            table[gpu] = holder

    for cid, alloc in state.fixed.items():
        put(physical, alloc.gpus, cid, "held")
    issued = {(pid, rank) for f in state.moves.values() for pid, ranks in f.waking.items() for rank in ranks}
    for pid, gen in state.generation.items():
        bundles = state.pipelines[pid].bundles
        for rank in {*gen.active, *gen.sleeping}:
            put(physical, bundles[rank], (pid, rank), "held")
        for rank, move in gen.waking.items():
            if move not in state.moves:
                raise PlanInvariantError(f"{pid} DP rank {rank} waits for move {move}, which is not in flight")
            put(physical if (pid, rank) in issued else reserved, bundles[rank], (pid, rank), "held or reserved")
        for rank, move in gen.sleeping.items():
            if move not in state.moves:
                raise PlanInvariantError(f"{pid} DP rank {rank} falls asleep in move {move}, which is not in flight")
    for request in state.pending.values():
        if request.move is not None:
            spec = state.pipelines[request.pipeline_id]
            put(reserved, spec.clusters[request.cluster].gpus, request.cluster_id, "reserved")
    for gpu in range(num):
        expected = physical[gpu]
        if expected is None and reserved[gpu] is not None:
            expected = reserved[gpu]
        if state.owner[gpu] != expected:
            raise PlanInvariantError(
                f"ownership table disagrees with allocations on GPU {gpu}: table {state.owner[gpu]!r}, "
                f"allocations {expected!r}"
            )


def _check_generation(state: SchedulerState, pid: str, ranks: set[int]) -> None:
    spec = state.pipelines.get(pid)
    if spec is None:
        _fail("referenced clusters exist", f"unknown pipeline {pid!r}")
    if pid not in state.generation:
        _fail("only generation clusters shrink or expand", f"{cluster_id(pid, ACTOR_INFER)!r} is not held")
    if ranks and min(ranks) >= 0 and max(ranks) < spec.dp_size:
        return
    bad = sorted(r for r in ranks if not 0 <= r < spec.dp_size)
    if bad:
        _fail("DP ranks within bounds", f"{pid} ranks {bad} outside 0..{spec.dp_size - 1}")


__all__ = ["check_state", "validate_plan"]
