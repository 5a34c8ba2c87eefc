"""Who holds each GPU: the one table the planner, the validator and the state all walk.

An entry is ``None`` (idle), a stage's cluster id (``"p1_actor_train"``) or ``(pipeline_id,
dp_rank)`` of a generation engine -- awake, waking or falling asleep: a bundle in transition
belongs to its transition, so it is never idle and never another pipeline's. Every change goes
through :meth:`Ownership.take`, :meth:`Ownership.free` or :meth:`Ownership.hand_over`, which
check the current holder first and raise :class:`PlanInvariantError` naming the GPU when it is not
the expected one: "no GPU in two places" is enforced where the table changes, not re-derived.

Pure and cheap: a list of entries, copied by the planner (scratch) and the validator (replay).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Union

from rlix_plugin.hookspecs import PlanInvariantError

Owner = Union[None, str, tuple[str, int]]


def is_stage(owner: Owner) -> bool:
    return type(owner) is str


def is_engine(owner: Owner) -> bool:
    return type(owner) is tuple


class Ownership:
    """The holder of every GPU of the pool, by global GPU id."""

    __slots__ = ("_owner", "_holders")

    def __init__(self, num_gpus: int = 0, entries: Iterable[Owner] | None = None) -> None:
        self._owner: list[Owner] = list(entries) if entries is not None else [None] * num_gpus
        #: pipeline -> rank -> its ``(pipeline, rank)`` entry, shared by a table and its copies:
        #: the planner and the validator write thousands of entries a pass, and reusing them
        #: spares the allocations (and the garbage collections they trigger). Bounded by
        #: :meth:`_holder_cache`.
        self._holders: dict[str, dict[int, tuple[str, int]]] = {}

    def copy(self) -> Ownership:
        table = Ownership(entries=self._owner)
        table._holders = self._holders
        return table

    def _holder_cache(self, pid: str) -> dict[int, tuple[str, int]]:
        """``pid``'s entries, reused across passes; all are dropped once more pipelines than
        GPUs have entries (pipelines come and go), so the cache stays small."""
        holders = self._holders
        cache = holders.get(pid)
        if cache is None:
            if len(holders) > len(self._owner):
                holders.clear()
            cache = holders[pid] = {}
        return cache

    def __getitem__(self, gpu: int) -> Owner:
        return self._owner[gpu]

    def __len__(self) -> int:
        return len(self._owner)

    def __iter__(self) -> Iterator[Owner]:
        return iter(self._owner)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ownership):
            return self._owner == other._owner
        if isinstance(other, list):
            return self._owner == other
        return NotImplemented

    def entries(self) -> tuple[Owner, ...]:
        return tuple(self._owner)

    # -- reading ------------------------------------------------------------------------------------

    def idle(self) -> list[int]:
        owner = self._owner
        if None not in owner:  # the common case on a busy pool, at C speed
            return []
        return [gpu for gpu, holder in enumerate(owner) if holder is None]

    def all_idle(self, gpus: Iterable[int]) -> bool:
        owner = self._owner
        return all(owner[g] is None for g in gpus)

    def held_by(self, gpus: Iterable[int], holder: Owner) -> bool:
        owner = self._owner
        return all(owner[g] == holder for g in gpus)

    # -- changing (checked) ---------------------------------------------------------------------------

    def take(self, gpus: Iterable[int], holder: Owner) -> None:
        """Give idle GPUs to ``holder``."""
        self.hand_over(gpus, None, holder)

    def free(self, gpus: Iterable[int], holder: Owner) -> None:
        """``holder`` gives its GPUs back: they become idle."""
        self.hand_over(gpus, holder, None)

    def hand_over(self, gpus: Iterable[int], current: Owner, new: Owner) -> None:
        """Move GPUs held by ``current`` to ``new``.

        :raises PlanInvariantError: a GPU is held by someone else than ``current``.
        """
        owner = self._owner
        gpus = tuple(gpus)
        for gpu in gpus:
            if owner[gpu] != current:
                raise PlanInvariantError(
                    f"plan rejected, invariant 'no GPU in two places' broken: GPU {gpu} is held by "
                    f"{describe(owner[gpu])}, not {describe(current)} (wanted by {describe(new)})"
                )
        for gpu in gpus:
            owner[gpu] = new

    def vacate(self, pid: str, ranks: Iterable[int], bundles: Sequence[tuple[int, ...]], marker: object) -> int:
        """Put ``marker`` on the GPUs of ``pid``'s engines ``ranks``: the validator's replay of
        their sleep. Returns how many GPUs.

        :raises PlanInvariantError: a GPU is not held by that engine, as :meth:`hand_over` says.
        """
        owner = self._owner
        count = 0
        if bundles and len(bundles[0]) == 1:  # TP 1: one GPU per bundle
            for rank in ranks:
                gpus = bundles[rank]
                if owner[gpus[0]] != (pid, rank):
                    self.hand_over(gpus, (pid, rank), marker)  # type: ignore[arg-type]  # raises, naming the GPU
                owner[gpus[0]] = marker  # type: ignore[call-overload]
                count += 1
            return count
        for rank in ranks:
            holder = (pid, rank)
            gpus = bundles[rank]
            for gpu in gpus:
                if owner[gpu] != holder:
                    self.hand_over(gpus, holder, marker)  # type: ignore[arg-type]  # raises, naming the GPU
                owner[gpu] = marker  # type: ignore[call-overload]
            count += len(gpus)
        return count

    def occupy(
        self, pid: str, ranks: Iterable[int], bundles: Sequence[tuple[int, ...]], allowed: object
    ) -> tuple[int, int, tuple[int, Owner, Owner] | None]:
        """Give ``pid``'s engines ``ranks`` their GPUs, each idle or holding ``allowed`` (the validator's
        replay of their wake). Returns (GPUs taken, of which held ``allowed``, the first GPU that
        was neither as (gpu, wanted by, held by), or None); stops at that GPU."""
        owner = self._owner
        taken = from_allowed = 0
        if bundles and len(bundles[0]) == 1:  # TP 1: one GPU per bundle
            cache = self._holder_cache(pid)
            for rank in ranks:
                gpu = bundles[rank][0]
                current = owner[gpu]
                if current is not None:
                    if current is not allowed:
                        return taken, from_allowed, (gpu, (pid, rank), current)
                    from_allowed += 1
                owner[gpu] = cache.get(rank) or cache.setdefault(rank, (pid, rank))
                taken += 1
            return taken, from_allowed, None
        for rank in ranks:
            holder = (pid, rank)
            for gpu in bundles[rank]:
                current = owner[gpu]
                if current is not None:
                    if current is not allowed:
                        return taken, from_allowed, (gpu, holder, current)
                    from_allowed += 1
                owner[gpu] = holder
                taken += 1
        return taken, from_allowed, None

    def count_idle(self) -> int:
        return self._owner.count(None)

    def assign(self, pid: str, ranks: Iterable[int], bundles: Sequence[tuple[int, ...]]) -> None:
        """Unchecked: give ``pid``'s engines ``ranks`` their GPUs (scratch copies only)."""
        owner = self._owner
        if bundles and len(bundles[0]) == 1:  # TP 1: one GPU per bundle
            cache = self._holder_cache(pid)
            for rank in ranks:
                owner[bundles[rank][0]] = cache.get(rank) or cache.setdefault(rank, (pid, rank))
            return
        for rank in ranks:
            holder = (pid, rank)
            for gpu in bundles[rank]:
                owner[gpu] = holder

    def set(self, gpus: Iterable[int], new: Owner) -> None:
        """Unchecked assignment, for scratch copies in the planner only."""
        owner = self._owner
        for gpu in gpus:
            owner[gpu] = new


def describe(owner: Owner) -> str:
    """``idle``, a cluster id, or ``p1_actor_infer[dp2]``."""
    if owner is None:
        return "idle"
    if type(owner) is tuple:
        return f"{owner[0]}_actor_infer[dp{owner[1]}]"
    return str(owner)


__all__ = ["Owner", "Ownership", "describe", "is_engine", "is_stage"]
