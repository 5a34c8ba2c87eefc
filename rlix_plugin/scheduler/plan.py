"""What one planning pass decides: a list of moves, plain data.

A :class:`Move` is one transition of a set of GPUs: first the engines in ``sleeps`` are put to
sleep (concurrently, one resize call per pipeline), then the freed GPUs go where the move says --
engines of one pipeline woken (``wakes``), a stage granted its device mapping (``grant``), or
nowhere (a release). A move with no sleeps goes straight to its second phase. Different moves
touch disjoint GPUs and run independently: a slow or hung resize holds up only its own move.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Why a move happens (also the reason recorded for every engine it puts to sleep).
RELEASED = "released"
IDLE = "idle GPUs"
SYNC_COSTS_MORE = "a weight sync would cost more than a sleep and a wake"
BATCHED_BETWEEN_ROLLOUTS = "batched engines sleep between rollouts (a few kept awake would take the next whole batch)"


def preempted_by(cluster_id: str) -> str:
    return f"preempted by {cluster_id}"


def donated_to(pipeline_id: str) -> str:
    return f"donated to {pipeline_id}"


@dataclass
class Move:
    """Sleep ``sleeps``, then wake ``wakes`` or grant ``grant`` on the freed GPUs."""

    reason: str
    #: pipeline -> DP ranks put to sleep first.
    sleeps: dict[str, set[int]] = field(default_factory=dict)
    #: pipeline -> DP ranks woken once every sleep of the move is done.
    wakes: dict[str, set[int]] = field(default_factory=dict)
    #: Stage cluster id granted its mapping once every sleep of the move is done.
    grant: str | None = None
    #: GPUs of a grant (the mapping), for validation and reading.
    grant_gpus: tuple[int, ...] = ()

    @property
    def switches(self) -> int:
        """Engine state changes this move makes (each sleep and each wake of one DP rank)."""
        return sum(len(r) for r in self.sleeps.values()) + sum(len(r) for r in self.wakes.values())


@dataclass
class Plan:
    """The moves of one planning pass, and the generation targets behind them."""

    moves: list[Move] = field(default_factory=list)
    #: Generation target in bundles per pipeline considered, and the fractional ideal behind it.
    targets: dict[str, int] = field(default_factory=dict)
    ideal: dict[str, float] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.moves

    # -- flat views (tests, benchmarks, reports) ------------------------------------------------------

    @property
    def shrinks(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for move in self.moves:
            for pid, ranks in move.sleeps.items():
                out.setdefault(pid, set()).update(ranks)
        return out

    @property
    def expands(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for move in self.moves:
            for pid, ranks in move.wakes.items():
                out.setdefault(pid, set()).update(ranks)
        return out

    @property
    def grants(self) -> list[str]:
        return [m.grant for m in self.moves if m.grant is not None]

    @property
    def reasons(self) -> dict[tuple[str, int], str]:
        """Why each (pipeline, rank) is put to sleep."""
        return {(pid, rank): m.reason for m in self.moves for pid, ranks in m.sleeps.items() for rank in ranks}

    @property
    def activations(self) -> int:
        return sum(len(r) for m in self.moves for r in m.wakes.values())

    @property
    def shrink_count(self) -> int:
        return sum(len(r) for m in self.moves for r in m.sleeps.values())


__all__ = [
    "BATCHED_BETWEEN_ROLLOUTS",
    "IDLE",
    "RELEASED",
    "SYNC_COSTS_MORE",
    "Move",
    "Plan",
    "donated_to",
    "preempted_by",
]
