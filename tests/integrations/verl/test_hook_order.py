"""The rlix_sync trainer's hook points, driven through verl's own fit loop for two steps.

verl's ``fit`` / ``step`` / lifecycle methods run for real; engines, workers, TransferQueue and
loggers are fakes (``fakes.py``) that write to one timeline, so the order of hook calls and
engine events is checked together. Hook calls are also checked with the shipped recorder.
"""

from __future__ import annotations

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

from rlix_plugin import hookimpl
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, Grant, Priority

from .fakes import TimelinePlugin
from .helpers import RLIX_ON, SAMPLES_PER_STEP, SMALL_JOB, build_trainer, compose

PIPELINE = "job-a"


def _run(harness):
    harness.trainer.init()
    harness.trainer.fit(harness.manager)


def _hook_sequence(recorder):
    """Hook calls as short strings: ``request_gpus(actor_train,1)``, ``bump(2)``..."""
    out = []
    for call in recorder.calls():
        name = call.name.removeprefix("rlix_")
        if name in {"request_gpus", "release"}:
            extra = f"({call.cluster}" + (f",{call.priority})" if name == "request_gpus" else ")")
            out.append(name + extra)
        elif name == "signal_demand":
            out.append(f"signal_demand({call.rollout_id},{call.step_target})")
        elif name == "begin_progress_batch":
            out.append(f"begin({call.step_target},{call.initial_completed})")
        elif name == "bump_completed":
            out.append(f"bump({call.count})")
        elif name == "end_progress_batch":
            out.append("end")
        else:
            out.append(name)
    return out


def _collapse_bumps(sequence):
    """Merge consecutive bumps into one ``bump*(total)``: how they split is the pump's business."""
    out: list[str] = []
    for item in sequence:
        if item.startswith("bump(") and out and out[-1].startswith("bump*("):
            total = int(out[-1][6:-1]) + int(item[5:-1])
            out[-1] = f"bump*({total})"
        elif item.startswith("bump("):
            out.append(f"bump*({item[5:-1]})")
        else:
            out.append(item)
    return out


# init() closes its own session: it holds nothing once it returns.
INIT = [
    "register_pipeline",
    f"request_gpus(actor_train,{int(Priority.INITIALIZATION)})",
    "release(actor_train)",
    "release(actor_infer)",
    "release(actor_train)",
    "unregister_pipeline",
]

STEP = [
    f"begin({SAMPLES_PER_STEP},0)",
    f"bump*({SAMPLES_PER_STEP})",
    "end",
    "release(actor_infer)",
    f"request_gpus(actor_train,{int(Priority.ACTOR_TRAINING)})",
    "release(actor_train)",
]


def test_two_steps_call_the_hooks_in_the_documented_order(monkeypatch, rlix_hooks, rlix_recorder):
    harness = build_trainer(monkeypatch, compose(*SMALL_JOB, *RLIX_ON), hooks=rlix_hooks)
    _run(harness)

    assert _collapse_bumps(_hook_sequence(rlix_recorder)) == [
        *INIT,
        "register_pipeline",
        f"signal_demand(1,{SAMPLES_PER_STEP})",
        *STEP,
        f"signal_demand(2,{SAMPLES_PER_STEP})",
        *STEP,
        f"signal_demand(3,{SAMPLES_PER_STEP})",
        "release(actor_infer)",
        "release(actor_train)",
        "unregister_pipeline",
    ]
    # Every call names this pipeline; the finish is recorded as such.
    assert {call.pipeline_id for call in rlix_recorder.calls()} == {PIPELINE}
    assert [c.reason for c in rlix_recorder.calls("unregister_pipeline")] == ["initialized", "finished"]
    # Units: each group bumps by its size (n=2), never by 1 prompt.
    assert {call.count for call in rlix_recorder.calls("bump_completed")} == {2}
    # Rollouts of step s carry the weights of step s - 1.
    assert [c.target_weight_version for c in rlix_recorder.calls("begin_progress_batch")] == [0, 1]
    registered = rlix_recorder.calls("register_pipeline")[-1].clusters
    assert registered[ACTOR_INFER].tp_size == 2 and registered[ACTOR_INFER].gpus == (0, 1, 2, 3)
    assert registered[ACTOR_TRAIN].gpus == (0, 1, 2, 3)
    assert harness.manager.attached == 1 and harness.manager.detached == 1


def test_engine_events_interleave_with_the_hooks_as_documented(monkeypatch, rlix_hooks, rlix_register):
    harness = build_trainer(monkeypatch, compose(*SMALL_JOB, *RLIX_ON), hooks=rlix_hooks)
    rlix_register(TimelinePlugin(harness.timeline))
    _run(harness)

    events = [
        name
        for kind, name, _ in harness.timeline.events
        if (kind == "hook" and name in {"signal_demand", "begin_progress_batch", "end_progress_batch", "release"})
        or (kind == "engine" and name in {"update_weights", "sleep", "sleep_replicas"})
        or (kind == "verl" and name in {"generate", "setup"})
    ]
    # Unscheduled grants (no scheduler answers): the trainer wakes everything itself, after the
    # demand signal; it sleeps the engines before the batch ends and the GPUs are released.
    step = ["begin_progress_batch", "generate", "sleep", "sleep", "end_progress_batch", "release", "release"]
    assert events == [
        "setup",
        "sleep_replicas",  # verl's _setup leaves the engines asleep
        "release",  # actor_train after initialisation
        "release",  # init's session closes: actor_infer, actor_train
        "release",
        "signal_demand",  # fit's session
        "update_weights",
        *step,
        "signal_demand",
        "update_weights",
        *step,
        "signal_demand",
        "update_weights",
        "release",
        "release",
    ]
    assert harness.timeline.of("engine", "update_weights") == [0, 1, 2]
    # Unscheduled: every replica is woken each time.
    assert harness.timeline.of("engine", "resume kv_cache") == [0, 1] * 3
    # The agent loop gets verl's abort-aware client, which re-sends requests of a preempted replica.
    harness.trainer.get_llm_client()
    client_cls, kwargs = harness.llm_server_manager.client_requests[-1]
    assert client_cls.__name__ == "FullyAsyncLLMServerClient" and kwargs == {"only_hybrid": True}


class PartialScheduler:
    """A scheduler stand-in: grants demand by waking DP rank 0 only, through the supply hook,
    and sleeps the pipeline's engines when its generation GPUs are released."""

    def __init__(self, hooks):
        self.hooks = hooks
        self.resizes: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []

    def _resize(self, pipeline_id, remove=(), add=()):
        awake = self.hooks.resize_infer(pipeline_id=pipeline_id, dp_ranks_to_remove=remove, dp_ranks_to_add=add)
        self.resizes.append((tuple(remove), tuple(add), awake))
        return awake

    @hookimpl
    def rlix_signal_demand(self, pipeline_id):
        awake = self._resize(pipeline_id, add=(0,))
        return Grant(pipeline_id, ACTOR_INFER, gpus=(0, 1), dp_ranks=awake, scheduled=True)

    @hookimpl
    def rlix_request_gpus(self, pipeline_id, cluster):
        return Grant(pipeline_id, cluster, gpus=(0, 1, 2, 3), scheduled=True)

    @hookimpl
    def rlix_release(self, pipeline_id, cluster):
        if cluster == ACTOR_INFER:
            self._resize(pipeline_id, remove=(0, 1))


def test_scheduled_grants_wake_only_the_granted_replicas(monkeypatch, rlix_hooks, rlix_register, rlix_recorder):
    harness = build_trainer(monkeypatch, compose(*SMALL_JOB, *RLIX_ON), hooks=rlix_hooks)
    scheduler = PartialScheduler(rlix_hooks)
    rlix_register(scheduler)
    harness.trainer.init()

    # init() asks for no rollout GPUs: everything asleep, nothing routed to, nothing woken (its
    # closing release of actor_infer finds nothing awake).
    assert [r.awake for r in harness.replicas] == [False, False]
    assert harness.load_balancer.servers == set()
    assert scheduler.resizes == [((0, 1), (), ())]

    harness.trainer.fit(harness.manager)
    # Each demand woke rank 0 through the weight update (fit start, step 1 end, step 2 end); the
    # trainer never woke everything on its own, and replica 1 never resumed anything.
    assert harness.timeline.of("engine", "update_weights") == [0, 1, 2]
    assert harness.timeline.of("engine", "resume weights") == [0, 0, 0]
    assert harness.timeline.of("engine", "resume kv_cache") == [0, 0, 0]
    # Releasing generation after the rollout finds the engines already asleep: nothing to do.
    assert [awake for remove, _, awake in scheduler.resizes if remove] == [(), (), (), ()]
    resize_results = [c.result for c in rlix_recorder.calls("resize_infer")]
    assert resize_results == [(), (0,), (), (0,), (), (0,), ()]
    # The pipeline's engines answer only for it, and only while a session is open.
    assert rlix_hooks.resize_infer(pipeline_id="someone-else", dp_ranks_to_add=(0,)) is None
    assert rlix_hooks.resize_infer(pipeline_id=PIPELINE, dp_ranks_to_add=(0,)) is None


class GrowingScheduler(PartialScheduler):
    """Also wakes DP rank 1 once each rollout has begun, as a scheduler does when GPUs free up
    in the middle of a rollout."""

    @hookimpl
    def rlix_begin_progress_batch(self, pipeline_id):
        self._resize(pipeline_id, add=(1,))


def test_a_wake_in_the_middle_of_a_rollout_serves_the_weights_that_rollout_uses(
    monkeypatch, rlix_hooks, rlix_register, rlix_recorder
):
    harness = build_trainer(monkeypatch, compose(*SMALL_JOB, *RLIX_ON), hooks=rlix_hooks)
    rlix_register(GrowingScheduler(rlix_hooks))
    harness.trainer.init()
    harness.trainer.fit(harness.manager)
    # Per rollout s: rank 0 woken before it with the weights of step s - 1, then rank 1 during
    # it with the same weights (not with the step number verl has already moved to).
    assert harness.timeline.of("engine", "update_weights") == [0, 0, 1, 1, 2]
    assert harness.timeline.of("engine", "resume kv_cache") == [0, 1, 0, 1, 0]
    assert [c.target_weight_version for c in rlix_recorder.calls("begin_progress_batch")] == [0, 1]


@pytest.mark.parametrize(
    "error",
    [RuntimeError("actor update blew up"), KeyboardInterrupt()],
    ids=["exception", "keyboard-interrupt"],
)
def test_fit_releases_everything_when_training_raises(monkeypatch, rlix_hooks, rlix_recorder, error):
    harness = build_trainer(monkeypatch, compose(*SMALL_JOB, *RLIX_ON), hooks=rlix_hooks, update_actor_error={2: error})
    with pytest.raises(type(error)):
        _run(harness)

    tail = _hook_sequence(rlix_recorder)[-4:]
    # Raised while training step 2 (holding actor_train): both clusters go back, then unregister.
    assert tail == [
        f"request_gpus(actor_train,{int(Priority.ACTOR_TRAINING)})",
        "release(actor_infer)",
        "release(actor_train)",
        "unregister_pipeline",
    ]
    assert type(error).__name__ in rlix_recorder.calls("unregister_pipeline")[-1].reason
    assert harness.manager.detached == 1
    # The engines plugin left the manager with the pipeline.
    assert rlix_hooks.resize_infer(pipeline_id=PIPELINE, dp_ranks_to_add=(0,)) is None


def test_fit_interrupted_mid_rollout_ends_the_open_batch_first(monkeypatch, rlix_hooks, rlix_recorder):
    harness = build_trainer(
        monkeypatch, compose(*SMALL_JOB, *RLIX_ON), hooks=rlix_hooks, fail_at={2: KeyboardInterrupt()}
    )
    with pytest.raises(KeyboardInterrupt):
        _run(harness)

    sequence = _collapse_bumps(_hook_sequence(rlix_recorder))
    assert sequence[-6:] == [
        f"begin({SAMPLES_PER_STEP},0)",
        f"bump*({SAMPLES_PER_STEP // 2})",  # the half the fake workers reported before the interrupt
        "end",
        "release(actor_infer)",
        "release(actor_train)",
        "unregister_pipeline",
    ]


def test_init_failure_unregisters(monkeypatch, rlix_hooks, rlix_recorder):
    harness = build_trainer(monkeypatch, compose(*SMALL_JOB, *RLIX_ON), hooks=rlix_hooks)

    def broken_setup():
        raise RuntimeError("no GPU memory")

    harness.trainer._setup = broken_setup
    with pytest.raises(RuntimeError, match="no GPU memory"):
        harness.trainer.init()
    assert _hook_sequence(rlix_recorder) == [
        "register_pipeline",
        f"request_gpus(actor_train,{int(Priority.INITIALIZATION)})",
        "release(actor_train)",
        "release(actor_infer)",
        "release(actor_train)",
        "unregister_pipeline",
    ]


def test_between_init_and_fit_the_job_holds_nothing(monkeypatch, rlix_hooks, rlix_recorder):
    # verl's TaskRunner builds the agent-loop manager here, with no trainer hook around it.
    harness = build_trainer(monkeypatch, compose(*SMALL_JOB, *RLIX_ON), hooks=rlix_hooks)
    harness.trainer.init()
    assert not harness.trainer.rlix_session.registered
    assert _hook_sequence(rlix_recorder) == INIT
    assert rlix_recorder.calls("unregister_pipeline")[-1].reason == "initialized"
    assert not any(r.awake for r in harness.replicas)


def test_refill_grows_the_target_and_keeps_the_count(monkeypatch, rlix_hooks, rlix_recorder):
    harness = build_trainer(monkeypatch, compose(*SMALL_JOB, *RLIX_ON), hooks=rlix_hooks, steps=1)
    trainer = harness.trainer
    trainer.init()
    trainer.agent_loop_manager = harness.manager
    harness.manager.rlix_attach(trainer.rlix_session.groups_completed)
    trainer.global_steps = 1
    trainer._add_batch_to_generate()  # 4 prompts: 2 groups finish at once
    trainer._add_prompts_to_generate(2)  # verl's replay buffer refilling 2 prompts
    begins = [(c.step_target, c.initial_completed) for c in rlix_recorder.calls("begin_progress_batch")]
    assert begins == [(8, 0), (12, 4)]


def test_a_manager_without_progress_still_releases(monkeypatch, rlix_hooks, rlix_recorder, caplog):
    harness = build_trainer(monkeypatch, compose(*SMALL_JOB, *RLIX_ON), hooks=rlix_hooks, with_progress=False)
    with caplog.at_level("WARNING", logger="rlix_plugin.integrations.verl"):
        _run(harness)
    assert "reports no per-group progress" in caplog.text
    assert rlix_recorder.calls("bump_completed") == []
    assert _hook_sequence(rlix_recorder)[-1] == "unregister_pipeline"


def test_disabled_calls_no_hook_and_behaves_like_verl_sync(monkeypatch, rlix_hooks, rlix_recorder):
    config = compose(*SMALL_JOB, "trainer.v1.trainer_mode=rlix_sync")
    harness = build_trainer(monkeypatch, config, hooks=rlix_hooks)
    _run(harness)

    assert rlix_recorder.calls() == []
    assert harness.trainer.rlix_session is None
    # verl's PPOTrainerSync: wake everything at init end and each step end, sleep everything
    # after each sample; the load balancer is left alone.
    engine = [n for n in harness.timeline.names("engine") if n in {"sleep_replicas", "update_weights"}]
    assert engine == [
        "sleep_replicas",
        "update_weights",
        "sleep_replicas",
        "update_weights",
        "sleep_replicas",
        "update_weights",
    ]
    assert harness.timeline.of("engine", "resume kv_cache") == [0, 1] * 3
    assert harness.timeline.names("lb") == []
    harness.trainer.get_llm_client()
    assert harness.llm_server_manager.client_requests == [(None, {})]
    # The manager's progress methods are never touched when disabled.
    assert harness.manager.attached == 0


def test_disabled_explicitly_is_the_same(monkeypatch, rlix_hooks, rlix_recorder):
    config = compose(
        *SMALL_JOB, "trainer.v1.trainer_mode=rlix_sync", "+trainer.rlix.enable=false", "+trainer.rlix.backend=ray"
    )
    harness = build_trainer(monkeypatch, config, hooks=rlix_hooks)
    _run(harness)
    assert rlix_recorder.calls() == []
