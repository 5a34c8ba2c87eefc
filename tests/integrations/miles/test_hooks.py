"""MilesRLixHooks in one process: what miles' calls become on the rlix hooks (units, streams,
tolerance), and that nothing it does can break or stall the rollout function."""

from __future__ import annotations

import logging
import pickle
import threading
import time

import pytest

from rlix_plugin import Hooks, get_plugin_manager, hookimpl
from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.hookspecs import ACTOR_INFER, ClusterSpec, InvalidRequestError
from rlix_plugin.integrations.miles import LOGGER_NAME, MilesRLixHooks

N = 4  # samples per group


def lost_warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING and "progress signal lost" in r.getMessage()]


@pytest.fixture
def miles_hooks(rlix_hooks):
    hooks = MilesRLixHooks("p1", N, backend="noop", hooks=rlix_hooks, engine_to_rank={5: 1, 7: 0})
    hooks.set_rollout(0)  # what the session's signal_rollout_demand does before each rollout
    return hooks


def test_groups_become_samples_on_the_hooks(miles_hooks, rlix_recorder):
    miles_hooks.begin_progress_batch(target_weight_version=3, step_target_groups=8, initial_completed=2)
    miles_hooks.bump_completed(target_weight_version=3)
    miles_hooks.bump_completed(target_weight_version=4)
    miles_hooks.end_progress_batch()
    begin = rlix_recorder.getcall("begin_progress_batch")
    assert begin.kwargs == {
        "pipeline_id": "p1",
        "rollout_id": 0,
        "mode": "full",
        "adapter_id": None,
        "target_weight_version": 3,
        "step_target": 32,
        "initial_completed": 8,
    }
    bumps = rlix_recorder.calls("bump_completed")
    assert [(c.count, c.target_weight_version, c.mode) for c in bumps] == [(N, 3, "full"), (N, 4, "full")]
    assert rlix_recorder.getcall("end_progress_batch").kwargs == {
        "pipeline_id": "p1",
        "rollout_id": 0,
        "mode": "full",
        "adapter_id": None,
    }


def test_each_batch_keeps_the_rollout_it_began_with(miles_hooks, rlix_recorder):
    """The next rollout's id may be set while a batch is open (its demand is signalled before
    the batch ends, e.g. on the engine thread): the open batch's bumps and end keep its own."""
    miles_hooks.set_rollout(4)
    miles_hooks.begin_progress_batch(0, 2, 0)
    miles_hooks.set_rollout(5)
    miles_hooks.bump_completed(target_weight_version=0)
    miles_hooks.end_progress_batch()
    miles_hooks.begin_progress_batch(0, 2, 0)
    miles_hooks.end_progress_batch()
    assert [(c.name, c.rollout_id) for c in rlix_recorder.calls()] == [
        ("rlix_begin_progress_batch", 4),
        ("rlix_bump_completed", 4),
        ("rlix_end_progress_batch", 4),
        ("rlix_begin_progress_batch", 5),
        ("rlix_end_progress_batch", 5),
    ]


def test_a_batch_with_no_rollout_id_is_a_lost_signal_not_a_guess(rlix_hooks, rlix_recorder, caplog):
    hooks = MilesRLixHooks("p1", N, backend="noop", hooks=rlix_hooks)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        hooks.begin_progress_batch(0, 2, 0)  # must not raise into the rollout function
        hooks.bump_completed(target_weight_version=0)
        hooks.end_progress_batch()
    assert rlix_recorder.calls() == [], "nothing reaches the scheduler under a made-up rollout id"
    (warning,) = lost_warnings(caplog)
    assert "no rollout id" in warning.getMessage() and "signal_rollout_demand" in warning.getMessage()


@pytest.mark.parametrize("bad", [-1, "3", None, True, 2.0])
def test_set_rollout_refuses_bad_ids_and_keeps_the_last_good_one(miles_hooks, bad):
    with pytest.raises(InvalidRequestError, match="rollout_id must be an int >= 0"):
        miles_hooks.set_rollout(bad)
    assert miles_hooks.rollout_id == 0


def test_lora_stream_is_carried_through_bump_and_end(miles_hooks, rlix_recorder):
    miles_hooks.begin_progress_batch(0, 2, 0, mode="lora", adapter_id="a1")
    miles_hooks.bump_completed(target_weight_version=0)
    miles_hooks.end_progress_batch()
    assert {(c.mode, c.adapter_id) for c in rlix_recorder.calls()} == {("lora", "a1")}


def test_end_without_begin_and_a_second_end_do_nothing(miles_hooks, rlix_recorder):
    miles_hooks.end_progress_batch()
    miles_hooks.begin_progress_batch(0, 1, 0)
    miles_hooks.end_progress_batch()
    miles_hooks.end_progress_batch()
    assert rlix_recorder.names() == ["rlix_begin_progress_batch", "rlix_end_progress_batch"]


def test_a_bump_outside_any_batch_is_dropped(miles_hooks, rlix_recorder):
    miles_hooks.bump_completed(target_weight_version=0)  # straggler before the first begin
    miles_hooks.begin_progress_batch(0, 1, 0)
    miles_hooks.end_progress_batch()
    miles_hooks.bump_completed(target_weight_version=0)  # straggler after the end
    assert "rlix_bump_completed" not in rlix_recorder.names()


def test_report_preempt_maps_the_engine_index_to_its_dp_rank(miles_hooks, rlix_recorder):
    miles_hooks.report_preempt(5, "http://10.0.0.1:15000")
    miles_hooks.report_preempt(9, "http://10.0.0.1:15004")  # not an engine of this pipeline
    call = rlix_recorder.getcall("report_preempt")
    assert (call.dp_rank, call.worker_url, call.retracted) == (1, "http://10.0.0.1:15000", 1)


class Broken:
    @hookimpl
    def rlix_bump_completed(self):
        raise ConnectionError("scheduler unreachable")

    @hookimpl
    def rlix_end_progress_batch(self):
        raise ConnectionError("scheduler unreachable")


def test_failures_never_reach_the_rollout_and_are_logged_once_per_batch(miles_hooks, rlix_register, caplog):
    rlix_register(Broken())
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    miles_hooks.begin_progress_batch(0, 3, 0)
    for _ in range(3):
        miles_hooks.bump_completed(target_weight_version=0)  # raises inside: must not escape
    miles_hooks.end_progress_batch()
    assert len(lost_warnings(caplog)) == 1
    assert "pipeline 'p1'" in lost_warnings(caplog)[0].getMessage()
    miles_hooks.begin_progress_batch(0, 3, 0)  # the next batch may warn again
    miles_hooks.bump_completed(target_weight_version=0)
    assert len(lost_warnings(caplog)) == 2


def test_bad_input_from_miles_is_a_lost_signal_not_an_exception(miles_hooks, rlix_recorder, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    miles_hooks.begin_progress_batch(0, 0, 0)  # an empty batch: nothing to report
    miles_hooks.begin_progress_batch(0, 2, 0, mode="bogus")
    assert rlix_recorder.names() == []
    assert "step_target_groups" in lost_warnings(caplog)[0].getMessage()


def test_a_backend_that_cannot_be_built_is_a_lost_signal(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    hooks = pickle.loads(pickle.dumps(MilesRLixHooks("p1", N, backend="no-such-backend")))
    hooks.set_rollout(0)
    hooks.begin_progress_batch(0, 2, 0)
    hooks.bump_completed(target_weight_version=0)
    hooks.end_progress_batch()
    assert len(lost_warnings(caplog)) == 1 and "no-such-backend" in lost_warnings(caplog)[0].getMessage()
    assert "no-such-backend" in hooks.probe()["error"]


def test_rebuilt_on_first_use_from_the_backend_name():
    hooks = pickle.loads(pickle.dumps(MilesRLixHooks("p1", N, backend="noop", autoload=False)))
    hooks.set_rollout(0)
    probe = hooks.probe()
    assert (probe["backend"], probe["live"], probe["registered"], probe["error"]) == ("noop", [], None, None)
    assert probe["token"] == hooks.token
    assert hooks.front_end is hooks.front_end  # built once


@pytest.fixture
def scheduler():
    sched = LocalScheduler(4, 4, resize_timeout_s=5)
    yield sched
    sched.close()


@pytest.fixture
def local_front_end(scheduler):
    """Build the front end of pipeline p1 on ``scheduler`` (and its backend, closed after the test)."""
    backends = []

    def build():
        pm = get_plugin_manager("local", backend_options={"scheduler": scheduler}, autoload=False)
        hooks = Hooks(pm)
        hooks.register_pipeline(pipeline_id="p1", clusters={ACTOR_INFER: ClusterSpec(1, (0, 1, 2, 3))})
        backends.append(pm.get_plugin("rlix-backend"))
        return hooks, backends[-1]

    yield build
    for backend in backends:
        backend.close()


def test_a_begin_before_any_end_replaces_the_stale_batch_on_the_scheduler(scheduler, local_front_end):
    front, backend = local_front_end()
    hooks = MilesRLixHooks("p1", N, backend="local", hooks=front)
    hooks.set_rollout(0)
    hooks.begin_progress_batch(0, 8, 0)
    for _ in range(3):
        hooks.bump_completed(target_weight_version=0)
    hooks.begin_progress_batch(1, 5, 0)  # the rollout failed without end; the next one begins
    hooks.bump_completed(target_weight_version=1)
    assert backend.flush_progress()
    (stream,) = scheduler.snapshot()["pipelines"]["p1"]["progress"]
    assert (stream["step_target"], stream["completed"], stream["target_weight_version"]) == (5 * N, N, 1)


def test_probe_sees_the_pipeline_on_the_scheduler(scheduler, local_front_end):
    front, _ = local_front_end()
    probe = MilesRLixHooks("p1", N, backend="local", hooks=front).probe()
    assert probe["registered"] is True and probe["backend"] == "local"
    assert probe["live"] == ["rlix_begin_progress_batch", "rlix_bump_completed", "rlix_end_progress_batch"]
    assert MilesRLixHooks("p9", N, backend="local", hooks=front).probe()["registered"] is False


def test_progress_calls_do_not_wait_for_a_stalled_scheduler(scheduler, local_front_end):
    front, backend = local_front_end()
    hooks = MilesRLixHooks("p1", N, backend="local", hooks=front)
    hooks.set_rollout(0)
    released = threading.Event()
    scheduler.call_soon(released.wait, 10.0)  # the scheduler's loop is stuck until released
    try:
        started = time.monotonic()
        hooks.begin_progress_batch(0, 50, 0)
        for _ in range(50):
            hooks.bump_completed(target_weight_version=0)
        hooks.end_progress_batch()
        elapsed = time.monotonic() - started
    finally:
        released.set()
    assert elapsed < 1.0, f"progress calls waited {elapsed:.2f}s on a stalled scheduler"
    assert backend.flush_progress()  # and everything arrived once it recovered
    assert scheduler.snapshot()["pipelines"]["p1"]["progress"] == []
