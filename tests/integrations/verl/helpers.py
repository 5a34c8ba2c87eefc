"""Build verl's real config and a trainer whose GPU-bound parts are fakes.

Imports verl lazily: test modules call ``pytest.importorskip("verl")`` first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .fakes import (
    FakeAgentLoopManager,
    FakeCheckpointManager,
    FakeLLMServerManager,
    FakeLoadBalancer,
    FakePromptBatch,
    FakeReplayBuffer,
    FakeReplica,
    FakeWorkerGroup,
    Timeline,
)

#: A small job: 4 prompts × n=2 per step, 4 GPUs in rollout replicas of TP 2 (2 DP ranks).
SMALL_JOB = [
    "data.train_batch_size=4",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
    "trainer.nnodes=1",
    "trainer.n_gpus_per_node=4",
    "trainer.experiment_name=job-a",
    "trainer.val_before_train=false",
]
RLIX_ON = ["trainer.v1.trainer_mode=rlix_sync", "+trainer.rlix.enable=true", "+trainer.rlix.backend=noop"]
SAMPLES_PER_STEP = 4 * 2


def compose(*overrides: str) -> Any:
    """verl's shipped ``ppo_trainer`` config, composed with Hydra, with ``overrides``."""
    import verl.trainer
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.trainer.__file__), "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=list(overrides))


@dataclass
class Harness:
    """A trainer ready for ``init()`` then ``fit(manager)``, and the fakes behind it."""

    trainer: Any
    manager: FakeAgentLoopManager
    timeline: Timeline
    replicas: list[FakeReplica]
    load_balancer: FakeLoadBalancer
    llm_server_manager: FakeLLMServerManager


def _identity(batch: Any, *args: Any, **kwargs: Any) -> Any:
    return batch


def build_trainer(
    monkeypatch: Any,
    config: Any,
    *,
    hooks: Any = None,
    steps: int = 2,
    fail_at: dict[int, BaseException] | None = None,
    update_actor_error: dict[int, BaseException] | None = None,
    with_progress: bool = True,
) -> Harness:
    """The real ``rlix_sync`` trainer over ``config`` for ``steps`` steps, its verl internals
    (workers, engines, TransferQueue, loggers) replaced by fakes; verl's own ``fit`` loop,
    ``step`` and lifecycle methods run unchanged."""
    from verl.trainer.ppo.v1 import get_trainer_cls, trainer_base

    timeline = Timeline()

    class FakeTQ:
        @staticmethod
        def kv_batch_put(keys: list, partition_id: str, tags: list, **_: Any) -> None:
            timeline.add("verl", "kv_batch_put", len(keys))

        @staticmethod
        def kv_clear(keys: list, partition_id: str) -> None:
            timeline.add("verl", "kv_clear", len(keys))

    class Quiet:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def log(self, *args: Any, **kwargs: Any) -> None:
            pass

    monkeypatch.setattr(trainer_base, "tq", FakeTQ)
    monkeypatch.setattr(trainer_base, "Tracking", Quiet)
    monkeypatch.setattr(trainer_base, "ValidationGenerationsLogger", Quiet)
    monkeypatch.setattr(trainer_base, "DapoFilteredRewardTableLogger", Quiet)

    trainer_cls = get_trainer_cls("rlix_sync")
    trainer = trainer_cls(config=config, rlix_hooks=hooks)

    tp = int(config.actor_rollout_ref.rollout.tensor_model_parallel_size)
    dp = int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes) // tp
    replicas = [FakeReplica(r, timeline) for r in range(dp)]
    load_balancer = FakeLoadBalancer(timeline, [r.server_address for r in replicas])
    llm = FakeLLMServerManager(replicas, load_balancer)
    checkpoint_manager = FakeCheckpointManager(replicas, timeline)
    errors = update_actor_error or {}

    def fake_setup() -> None:
        # What verl's _setup leaves behind, minus the GPUs: engines built, then all asleep.
        timeline.add("verl", "setup")
        trainer._init_dump_executor()
        trainer.llm_server_manager = llm
        trainer.checkpoint_manager = checkpoint_manager
        trainer.actor_rollout_wg = FakeWorkerGroup(checkpoint_manager)
        trainer.reward_loop_manager = type("RLM", (), {"reward_loop_worker_handles": ["reward-worker"]})()
        trainer.global_steps = 0
        trainer.total_training_steps = steps
        trainer.steps_per_epoch = steps
        trainer.train_dataloader_it = None
        checkpoint_manager.sleep_replicas()

    def next_train_batch(num_prompts: int | None = None) -> FakePromptBatch:
        count = num_prompts or int(config.data.train_batch_size)
        return FakePromptBatch([f"p{trainer.global_steps}-{i}" for i in range(count)])

    def update_actor(batch: Any, metrics: dict) -> Any:
        timeline.add("verl", "update_actor", trainer.global_steps)
        if trainer.global_steps in errors:
            raise errors[trainer.global_steps]
        return batch

    trainer._setup = fake_setup
    trainer._next_train_batch = next_train_batch
    trainer.replay_buffer = FakeReplayBuffer(timeline, fail_at)
    for name in (
        "_balance_batch",
        "_compute_old_log_prob",
        "_compute_ref_log_prob",
        "_compute_values",
        "_compute_advantage",
        "_update_critic",
    ):
        setattr(trainer, name, _identity)
    trainer._update_actor = update_actor
    trainer._compute_metrics = lambda *args, **kwargs: None

    group_size = int(config.actor_rollout_ref.rollout.n)
    manager = FakeAgentLoopManager(timeline, group_size, with_progress=with_progress)
    return Harness(trainer, manager, timeline, replicas, load_balancer, llm)
