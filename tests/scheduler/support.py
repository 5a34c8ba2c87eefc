"""Helpers for scheduler tests: states with the seed topology, fake engines, async running."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, MODE_FULL, ClusterSpec
from rlix_plugin.progress import BEGIN, END, PROGRESS, ProgressReport
from rlix_plugin.scheduler.demand import RETIRED
from rlix_plugin.scheduler.plan import Plan
from rlix_plugin.scheduler.planner import plan_cycle
from rlix_plugin.scheduler.state import PendingRequest, ResizeAction, ResizeOutcome, Satisfied, SchedulerState
from rlix_plugin.scheduler.topology import PoolTopology
from rlix_plugin.scheduler.validation import check_state, validate_plan

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


def confirm(state: SchedulerState, action: ResizeAction) -> ResizeOutcome:
    """The outcome an engine that does exactly what it was asked would answer."""
    alloc = state.generation.get(action.pipeline_id)
    awake = set(alloc.active) if alloc is not None else set()
    awake -= set(action.remove)
    awake |= set(action.add)
    return ResizeOutcome(tuple(sorted(awake)))


def drain(state: SchedulerState, answer: Callable[[SchedulerState, ResizeAction], ResizeOutcome] = confirm) -> int:
    """Answer every resize call the moves in flight make, until none is left; returns how many."""
    calls = 0
    while True:
        actions = state.take_actions()
        if not actions:
            return calls
        for action in actions:
            state.resized(action, answer(state, action))
            check_state(state)
            calls += 1


def settle(
    state: SchedulerState, plan: Plan | None = None, policy: str = "gap_ratio"
) -> tuple[Plan, list[PendingRequest]]:
    """One planning pass whose moves all complete at once: (the plan, the requests satisfied)."""
    plan = plan if plan is not None else plan_cycle(state, policy)
    validate_plan(state, plan)
    state.start(plan)
    check_state(state)
    drain(state)
    satisfied = [e.request for e in state.take_events() if isinstance(e, Satisfied)]
    return plan, satisfied


IGNORED_FIELDS = ("clock", "_seq", "_move_ids", "_layouts", "_stage_gpus", "_placements")


def plain(value: Any) -> Any:
    """A comparable copy of state: objects become dicts of their fields (clocks, counters and the
    state's memoized layouts and placements out: caches, rebuilt on demand)."""
    if value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, dict):
        return sorted(((repr(k), plain(v)) for k, v in value.items()), key=lambda kv: kv[0])
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if hasattr(value, "entries") and callable(value.entries):
        return plain(list(value.entries()))
    fields = getattr(value, "__dict__", None)
    if fields is not None:
        return {k: plain(v) for k, v in fields.items() if k not in IGNORED_FIELDS}
    if hasattr(value, "__slots__"):
        return {k: plain(getattr(value, k)) for k in value.__slots__ if hasattr(value, k)}
    return value


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


#: Service methods that act for a pipeline and so take its lease right after the pipeline id.
LEASED = (
    "signal_demand",
    "request_gpus",
    "release",
    "release_and_request",
    "planned_release",
    "report_preempt",
    "unregister_pipeline",
    "admit_pipeline",
)


class AsOwners:
    """A SchedulerService as its pipelines call it: every call for a pipeline presents the lease
    its registration returned (tests call it with the pipeline id alone, as the hooks do)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.leases: dict[str, str] = {}

    async def register_pipeline(self, pipeline_id: str, *args: Any, **kwargs: Any) -> str:
        lease = await self.service.register_pipeline(pipeline_id, *args, **kwargs)
        self.leases[pipeline_id] = lease
        return lease

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.service, name)
        if name not in LEASED:
            return target

        def call(pipeline_id: str, *args: Any, **kwargs: Any) -> Any:
            return target(pipeline_id, self.leases.get(pipeline_id, "no lease"), *args, **kwargs)

        return call

    def apply_progress(self, report: ProgressReport) -> None:
        self.service.apply_progress(self.leases.get(report.pipeline_id, "no lease"), report)


# -- progress reports -------------------------------------------------------------------------------


def progress(
    pipeline_id: str,
    step_target: int,
    completed: int,
    *,
    rollout_id: int = 0,
    mode: str = MODE_FULL,
    adapter_id: str | None = None,
    version: int = 0,
    begin: bool = False,
) -> ProgressReport:
    """A ``PROGRESS`` report (a ``BEGIN`` with ``begin=True``) of one stream."""
    kind = BEGIN if begin else PROGRESS
    return ProgressReport(kind, pipeline_id, rollout_id, mode, adapter_id, step_target, completed, version)


def end(
    pipeline_id: str, *, rollout_id: int = 0, mode: str = MODE_FULL, adapter_id: str | None = None
) -> ProgressReport:
    """The ``END`` report of one stream."""
    return ProgressReport(END, pipeline_id, rollout_id, mode, adapter_id, 1, 0, 0)


def end_all(state: SchedulerState, pipeline_id: str) -> bool:
    """End every open stream of the pipeline's current rollout; True if that retired its demand."""
    rollout_id = state.demand.epochs.get(pipeline_id, 0)
    outcomes = [
        state.apply_progress(end(pipeline_id, rollout_id=rollout_id, mode=mode, adapter_id=adapter))
        for mode, adapter in list(state.progress.get(pipeline_id, {}))
    ]
    return RETIRED in outcomes
