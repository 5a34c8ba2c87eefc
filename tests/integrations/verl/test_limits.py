"""What a verl job declares about itself at registration: one replica's batch, from verl's own
rollout config, as ``PipelineLimits.samples_per_engine``."""

from __future__ import annotations

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

from verl.trainer.ppo.v1 import get_trainer_cls
from verl.utils.config import omega_conf_to_dataclass

from rlix_plugin import Hooks, get_plugin_manager
from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.hookspecs import InvalidRequestError, PipelineLimits
from rlix_plugin.integrations.verl import TRAINER_MODE
from rlix_plugin.integrations.verl.config import samples_per_engine

from .helpers import RLIX_ON, SMALL_JOB, compose

ROLLOUT = "actor_rollout_ref.rollout"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param((), 256, id="the-shipped-rollout-yaml"),
        pytest.param((f"{ROLLOUT}.max_num_seqs=32",), 32, id="max_num_seqs"),
        pytest.param(
            (f"{ROLLOUT}.max_num_seqs=32", f"{ROLLOUT}.data_parallel_size=2"), 64, id="dp-engines-per-replica"
        ),
        pytest.param(
            (f"{ROLLOUT}.name=vllm", f"+{ROLLOUT}.engine_kwargs.vllm.max_num_seqs=48"), 48, id="vllm-engine-kwargs"
        ),
        pytest.param(
            (f"{ROLLOUT}.name=sglang", f"+{ROLLOUT}.engine_kwargs.sglang.max_running_requests=40"),
            40,
            id="sglang-engine-kwargs",
        ),
        pytest.param(
            (f"{ROLLOUT}.name=sglang", f"+{ROLLOUT}.engine_kwargs.vllm.max_num_seqs=48"),
            256,
            id="another-engines-kwargs-are-ignored",
        ),
    ],
)
def test_one_bundle_runs_max_num_seqs_on_each_of_its_dp_engines(overrides, expected):
    assert samples_per_engine(compose(*SMALL_JOB, *overrides)) == expected


def test_a_rollout_config_without_max_num_seqs_gets_verls_own_default():
    config = compose(*SMALL_JOB, f"~{ROLLOUT}.max_num_seqs", f"{ROLLOUT}.name=vllm")
    # What verl's replicas read: the rollout config resolved into its RolloutConfig dataclass.
    resolved = omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    assert samples_per_engine(config) == resolved.max_num_seqs == 1024


@pytest.mark.parametrize(
    ("value", "shown"),
    [("0", "0"), ("-4", "-4"), ("null", "None"), ("many", "'many'"), ("true", "True"), ("2.5", "2.5")],
)
def test_a_bad_max_num_seqs_is_refused_naming_the_key_and_value(value, shown):
    config = compose(*SMALL_JOB, f"{ROLLOUT}.max_num_seqs={value}")
    with pytest.raises(InvalidRequestError, match=rf"^{ROLLOUT}\.max_num_seqs must be an int >= 1 .*, got {shown}$"):
        samples_per_engine(config)


def test_a_bad_engine_batch_keyword_is_refused_naming_it():
    config = compose(*SMALL_JOB, f"{ROLLOUT}.name=sglang", f"+{ROLLOUT}.engine_kwargs.sglang.max_running_requests=0")
    with pytest.raises(InvalidRequestError, match=rf"{ROLLOUT}\.engine_kwargs\.sglang\.max_running_requests .*got 0"):
        samples_per_engine(config)


def test_a_bad_max_num_seqs_fails_the_trainer_before_any_hook(rlix_hooks, rlix_recorder):
    config = compose(*SMALL_JOB, *RLIX_ON, f"{ROLLOUT}.max_num_seqs=0")
    with pytest.raises(InvalidRequestError, match=rf"{ROLLOUT}\.max_num_seqs must be an int >= 1"):
        get_trainer_cls(TRAINER_MODE)(config=config, rlix_hooks=rlix_hooks)
    assert rlix_recorder.calls() == []


def test_without_rlix_the_rollout_batch_is_left_to_verl():
    config = compose(*SMALL_JOB, "trainer.v1.trainer_mode=rlix_sync", f"{ROLLOUT}.max_num_seqs=0")
    assert get_trainer_cls(TRAINER_MODE)(config=config).rlix_session is None


@pytest.fixture
def scheduler():
    sched = LocalScheduler(4, 4)
    yield sched
    sched.close()


def test_the_scheduler_holds_the_batch_the_job_registered(scheduler):
    # One replica of TP 2 × DP 2 on the 4 GPUs: one bundle, two engines of 32 sequences each.
    config = compose(*SMALL_JOB, *RLIX_ON, f"{ROLLOUT}.max_num_seqs=32", f"{ROLLOUT}.data_parallel_size=2")
    pm = get_plugin_manager("local", backend_options={"scheduler": scheduler}, autoload=False)
    session = get_trainer_cls(TRAINER_MODE)(config=config, rlix_hooks=Hooks(pm)).rlix_session
    assert session is not None
    session.register()
    try:
        held = scheduler.read(lambda: scheduler.service.state.limits["job-a"])
        assert held == PipelineLimits(samples_per_engine=64)
    finally:
        session.close("test done")
    assert "job-a" not in scheduler.snapshot()["pipelines"]
