"""The rlix_sync trainer mode against verl's real Hydra config and classes."""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

from verl.trainer.ppo.v1 import AgentLoopWorkerTQ, PPOTrainerSync, get_trainer_cls
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, InvalidRequestError
from rlix_plugin.integrations.verl import MANAGER_CLASS_PATH, TRAINER_MODE
from rlix_plugin.integrations.verl.config import RlixVerlConfig, cluster_specs, samples_per_step

from .helpers import RLIX_ON, SMALL_JOB, compose


def test_mode_is_registered_on_verl_sync():
    cls = get_trainer_cls(TRAINER_MODE)
    assert issubclass(cls, PPOTrainerSync)
    assert cls.__module__ == "rlix_plugin.integrations.verl.trainer"


def test_constructible_from_the_shipped_config_with_rlix_on():
    config = compose(*SMALL_JOB, *RLIX_ON)
    trainer = get_trainer_cls(TRAINER_MODE)(config=config)

    # verl's literal "sync" checks keep working: sync replay buffer, sync mode everywhere.
    assert trainer.trainer_mode == "sync"
    assert config.trainer.v1.trainer_mode == "sync"
    assert type(trainer.replay_buffer) is ReplayBuffer
    # The progress-reporting agent loop manager is selected for verl's TaskRunner.
    assert config.actor_rollout_ref.rollout.agent.agent_loop_manager_class == MANAGER_CLASS_PATH
    session = trainer.rlix_session
    assert session is not None and session.pipeline_id == "job-a"
    assert session.samples_per_step == 8
    assert session.hooks.plugin_manager.backend_name == "noop"
    # Nothing is registered before init() opens a session.
    assert not session.registered
    assert not session.hooks.plugin_manager.has_plugin("rlix-verl-engines-job-a")


def test_constructible_with_rlix_absent_and_then_nothing_changes():
    config = compose(*SMALL_JOB, "trainer.v1.trainer_mode=rlix_sync")
    trainer = get_trainer_cls(TRAINER_MODE)(config=config)
    assert trainer.rlix_session is None and trainer.rlix_engines is None
    assert type(trainer.replay_buffer) is ReplayBuffer
    assert "agent_loop_manager_class" not in config.actor_rollout_ref.rollout.agent


def test_a_manager_the_job_chose_is_kept(caplog):
    config = compose(*SMALL_JOB, *RLIX_ON, "+actor_rollout_ref.rollout.agent.agent_loop_manager_class=my.Manager")
    with caplog.at_level("WARNING", logger="rlix_plugin.integrations.verl"):
        get_trainer_cls(TRAINER_MODE)(config=config)
    assert config.actor_rollout_ref.rollout.agent.agent_loop_manager_class == "my.Manager"
    assert "does not report per-group progress" in caplog.text


def test_config_block_is_read_with_defaults_and_overrides():
    assert RlixVerlConfig.from_verl(compose(*SMALL_JOB)) == RlixVerlConfig(pipeline_id="job-a")
    config = compose(
        *SMALL_JOB,
        "+trainer.rlix.enable=true",
        "+trainer.rlix.backend=ray",
        "+trainer.rlix.address=auto",
        "+trainer.rlix.timeout_s=30",
        "+trainer.rlix.pipeline_id=grpo-lr3e-6",
        "+trainer.rlix.gpus=[4,5,6,7]",
    )
    rlix = RlixVerlConfig.from_verl(config)
    assert rlix == RlixVerlConfig(True, "ray", "auto", 30.0, "grpo-lr3e-6", (4, 5, 6, 7))
    assert rlix.backend_options() == {"address": "auto"}
    specs = cluster_specs(config, rlix)
    assert specs[ACTOR_INFER].gpus == (4, 5, 6, 7) and specs[ACTOR_INFER].dp_size == 2
    assert specs[ACTOR_TRAIN].tp_size == 1
    assert samples_per_step(config) == 8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+trainer.rlix.enabled=true", "unknown key"),
        ("+trainer.rlix.enable=maybe", "enable must be true or false"),
        ("+trainer.rlix.timeout_s=0", "timeout_s must be > 0"),
        ("+trainer.rlix.timeout_s=soon", "timeout_s must be a number"),
        ("+trainer.rlix.pipeline_id='a b'", "letters, digits"),
        ("+trainer.rlix.gpus=[0,0,1,2]", "distinct"),
        ("+trainer.rlix.gpus=3", "list of GPU ids"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(override, message):
    with pytest.raises(InvalidRequestError, match=message):
        RlixVerlConfig.from_verl(compose(*SMALL_JOB, override))


def test_layout_errors_are_clear():
    config = compose(*SMALL_JOB, "+trainer.rlix.gpus=[0,1]")
    with pytest.raises(InvalidRequestError, match="lists 2 GPUs"):
        cluster_specs(config, RlixVerlConfig.from_verl(config))
    config = compose(*SMALL_JOB, "actor_rollout_ref.rollout.tensor_model_parallel_size=3")
    with pytest.raises(InvalidRequestError, match="do not split"):
        cluster_specs(config, RlixVerlConfig.from_verl(config))
    with pytest.raises(InvalidRequestError, match="runs in this process"):
        RlixVerlConfig(backend="local", address="auto").backend_options()


@pytest.mark.parametrize(
    "override, message",
    [
        ("+trainer.rlix.gpus=[0]", "lists 1 GPUs"),
        ("actor_rollout_ref.rollout.free_cache_engine=false", "free_cache_engine"),
    ],
)
def test_bad_config_fails_at_construction_before_any_hook(rlix_hooks, rlix_recorder, override, message):
    config = compose(*SMALL_JOB, *RLIX_ON, override)
    with pytest.raises(InvalidRequestError, match=message):
        get_trainer_cls(TRAINER_MODE)(config=config, rlix_hooks=rlix_hooks)
    assert rlix_recorder.calls() == []


def test_free_cache_engine_off_is_fine_without_rlix():
    config = compose(
        *SMALL_JOB, "trainer.v1.trainer_mode=rlix_sync", "actor_rollout_ref.rollout.free_cache_engine=false"
    )
    assert get_trainer_cls(TRAINER_MODE)(config=config).rlix_session is None


def test_agent_loop_manager_uses_the_progress_worker():
    from rlix_plugin.integrations.verl.agent_loop import RlixAgentLoopManagerTQ, RlixAgentLoopWorkerTQ
    from rlix_plugin.integrations.verl.progress import GroupProgressMixin

    manager = RlixAgentLoopManagerTQ(config=compose(*SMALL_JOB), llm_client=None)
    # AgentLoopManagerTQ sets its own worker class in __init__; ours must win.
    assert manager.agent_loop_workers_class is RlixAgentLoopWorkerTQ
    worker_cls = RlixAgentLoopWorkerTQ.__ray_actor_class__
    mro = worker_cls.__mro__
    assert mro.index(GroupProgressMixin) < mro.index(AgentLoopWorkerTQ.__ray_actor_class__)
    assert worker_cls._run_prompt is GroupProgressMixin._run_prompt


def test_verl_methods_the_integration_overrides_have_the_expected_shape():
    """Fail loudly if a verl upgrade changes what the integration hooks into."""
    verl_worker = AgentLoopWorkerTQ.__ray_actor_class__
    # Ray's tracing wrapper adds an optional _ray_trace_ctx to actor methods; not verl's.
    params = [p for p in inspect.signature(verl_worker._run_prompt).parameters if p != "_ray_trace_ctx"]
    assert params == [
        "self",
        "prompt",
        "sampling_params",
        "trajectory",
        "trace",
    ]
    run_loop = inspect.signature(verl_worker._run_agent_loop).parameters
    assert "kwargs" in run_loop and run_loop["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    for name in ("on_init_end", "on_sample_end", "on_step_end", "_submit_batch_to_rollout", "fit", "init"):
        assert callable(getattr(PPOTrainerSync, name)), name
    from verl.checkpoint_engine import CheckpointEngineManager
    from verl.workers.rollout.replica import RolloutReplica

    for name in ("update_weights", "sleep_replicas"):
        assert inspect.iscoroutinefunction(inspect.unwrap(getattr(CheckpointEngineManager, name))), name
    for name in ("sleep", "abort_all_requests", "resume_generation"):
        assert inspect.iscoroutinefunction(getattr(RolloutReplica, name)), name
    assert "reject_request" in inspect.signature(RolloutReplica.abort_all_requests).parameters
