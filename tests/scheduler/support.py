"""Helpers for scheduler tests: states with the seed topology, fake engines, async running."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec
from rlix_plugin.scheduler.state import SchedulerState
from rlix_plugin.scheduler.topology import PoolTopology

T = TypeVar("T")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def seed_clusters(train: tuple[int, ...], infer: tuple[int, ...] = (0, 1, 2, 3), tp: int = 1) -> dict[str, ClusterSpec]:
    return {ACTOR_INFER: ClusterSpec(tp, infer), ACTOR_TRAIN: ClusterSpec(len(train), train)}


def seed_state(clock: Callable[[], float] | None = None) -> SchedulerState:
    """The seed topology: 4 GPUs, P1 train [0,1], P2 train [2,3], both infer [0..3], tp 1."""
    state = SchedulerState(PoolTopology(4, 4), clock or FakeClock())
    for pid, train in (("p1", (0, 1)), ("p2", (2, 3))):
        state.register(pid, seed_clusters(train))
        state.admit(pid)
    return state


class FakeEngines:
    """Supply side of every pipeline: tracks awake ranks; can fail, hang or lie on purpose."""

    def __init__(self) -> None:
        self.awake: dict[str, set[int]] = {}
        self.calls: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
        self.fail: set[str] = set()
        self.hang: set[str] = set()
        self.lie: set[str] = set()
        self.changed = asyncio.Event()

    async def resize(self, pid: str, remove: tuple[int, ...], add: tuple[int, ...]) -> tuple[int, ...] | None:
        self.calls.append((pid, remove, add))
        if pid in self.fail:
            raise RuntimeError(f"engine of {pid} crashed")
        if pid in self.hang:
            await asyncio.sleep(3600)
        awake = self.awake.setdefault(pid, set())
        awake -= set(remove)
        awake |= set(add)
        self.changed.set()
        if pid in self.lie:
            return tuple(sorted(awake | set(remove)))
        return tuple(sorted(awake))


def run(coro: Awaitable[T], timeout_s: float = 20.0) -> T:
    """Run a coroutine to completion with a hard timeout (a hang fails the test, not the suite)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)  # type: ignore[arg-type]

    return asyncio.run(bounded())


async def wait_until(predicate: Callable[[], Any], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` on the event loop until true, failing with ``what`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.002)
