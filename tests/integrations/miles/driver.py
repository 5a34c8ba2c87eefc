"""A miles driver in miniature: what a miles user's driver does with this integration (one train
loop per pipeline, all on one event loop, as rlix's dual driver runs them), against
:class:`.miles_manager.MilesRolloutManager` (the pinned engine state machine and
``call_rollout_fn``) with the on-policy rollout function. Shared by the local and the Ray
end-to-end tests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec
from rlix_plugin.integrations.miles import MilesSession

from .rollouts import generate_rollout_on_policy
from .train_loop import run_async_train_loop

ROLLOUTS = 5
GROUPS = 4  # args.rollout_batch_size
N = 4  # args.n_samples_per_prompt
#: Seed topology: both pipelines generate on all four GPUs (TP 1) and train on two of them.
TRAIN = {"p1": (0, 1), "p2": (2, 3)}
SEEDS = {"p1": 3, "p2": 4}
#: What the end-to-end runs configure as the rollout function.
ROLLOUT_FUNCTION = generate_rollout_on_policy


def seed_clusters(train: tuple[int, ...]) -> dict[str, ClusterSpec]:
    return {ACTOR_TRAIN: ClusterSpec(len(train), train), ACTOR_INFER: ClusterSpec(1, (0, 1, 2, 3))}


@dataclass
class Record:
    """What one pipeline's run saw, for the asserts."""

    pipeline_id: str
    grants: list[tuple[int, ...]] = field(default_factory=list)
    versions: dict[int, set[int]] = field(default_factory=dict)
    groups: dict[int, int] = field(default_factory=dict)
    train_gpus: list[tuple[int, ...]] = field(default_factory=list)
    progress_seen: list[int] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0


class TrainGroupStandIn:
    """miles' train group: one policy-gradient step per rollout on the reference policy."""

    def __init__(self, seed: int, record: Record) -> None:
        from rlix_plugin.reference.framework.policy import Trainer

        self.trainer = Trainer(seed)
        self.record = record

    async def train(self, rollout_id: int, data: Any) -> None:
        samples = [s for group in data for s in group]
        self.record.groups[rollout_id] = len(data)
        self.record.versions[rollout_id] = {s.weight_version for s in samples}
        await asyncio.to_thread(self.trainer.step, samples)

    def state(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}


async def run_pipeline(
    session: MilesSession,
    manager: Any,
    *,
    publish: Any,
    progress_count: Any = None,
    rollouts: int = ROLLOUTS,
) -> Record:
    """Run ``rollouts`` steps of miles' train loop for one pipeline.

    :param manager: Something with miles' Ray call shape (``manager.generate.remote(id)``).
    :param publish: ``async publish(state) -> version``: weights into the manager after training.
    :param progress_count: ``() -> int``: progress reports the scheduler got for the pipeline.
    """
    record = Record(session.pipeline_id, started=time.monotonic())
    train_group = TrainGroupStandIn(SEEDS[session.pipeline_id], record)
    args = type("Args", (), {"num_rollout": rollouts, "start_rollout_id": 0})()

    async def signal_demand(rollout_id: int) -> None:
        grant = await session.signal_rollout_demand_async(rollout_id, GROUPS)
        record.grants.append(tuple(grant.dp_ranks))

    async def before_step(rollout_id: int) -> None:
        grant = await session.request_train_async()
        record.train_gpus.append(tuple(grant.gpus))

    async def after_step(rollout_id: int) -> None:
        try:
            await publish(train_group.state())
            if progress_count is not None:
                record.progress_seen.append(await asyncio.to_thread(progress_count))
        finally:
            await session.release_train_async()

    async def release_only(rollout_id: int) -> None:
        await session.release_train_async()

    await run_async_train_loop(
        args,
        train_group=train_group,
        rollout_manager=manager,
        before_step=before_step,
        after_step=after_step,
        release_only=release_only,
        signal_demand=signal_demand,
    )
    record.finished = time.monotonic()
    return record


def check_runs(records: list[Record]) -> None:
    """Both pipelines finished every rollout, on-policy, each rollout started with an engine awake,
    and they ran at the same time."""
    for record in records:
        assert sorted(record.groups) == list(range(ROLLOUTS)), record
        assert set(record.groups.values()) == {GROUPS}
        # Failure mode F1: a rollout dispatched with no engine of its pipeline awake.
        assert len(record.grants) == ROLLOUTS and all(record.grants), record.grants
        # Every woken engine got the latest weights before serving: rollout k ran on version k.
        assert record.versions == {k: {k} for k in range(ROLLOUTS)}, record.versions
        assert record.train_gpus == [TRAIN[record.pipeline_id]] * ROLLOUTS
    first, second = records
    assert first.started < second.finished and second.started < first.finished, "they ran together"


class LocalCalls:
    """Gives a plain object the call shape of a Ray actor handle (``obj.method.remote(...)``
    returns an awaitable), so miles' train loop can drive an in-process RolloutManager."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._obj, name)

        class _Method:
            @staticmethod
            def remote(*args: Any, **kwargs: Any) -> Any:
                return asyncio.ensure_future(asyncio.to_thread(method, *args, **kwargs))

        return _Method
