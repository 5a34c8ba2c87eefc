"""Property: random bad calls interleaved with a pipeline's good ones (local backend, through the
hooks) are each refused with an error naming the bad argument -- or, on the progress hot path,
dropped without raising -- and leave the scheduler's state exactly as it was; the good calls keep
working, and no GPU is ever double-booked."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ACTOR_TRAIN,
    ClusterSpec,
    InvalidRequestError,
    NotPipelineOwnerError,
    PipelineLimits,
    Priority,
)
from rlix_plugin.scheduler.validation import check_state

from ..waiting import wait_until
from .support import Engines, comparable, hooks_on, seed_clusters

MAX_STEP = 64
BAD_IDS = ["", "p0\n", " p0", 5, None, "x" * 200]
BAD_TIMEOUTS = [0, -1, math.inf, math.nan, 1e300, "1", True, None]
BAD_COUNTS = [-1, 1.5, "1", None, True, 2**70 * -1]
BAD_CLUSTERS = ["actor_eval", "", None, 3, ACTOR_TRAIN.upper()]
BAD_PRIORITIES = [1.9, "1", 99, -1, True, None]
BAD_STEPS = [0, -1, "8", 1.5, MAX_STEP + 1, 10**12, None]

#: (hook, the good arguments, the argument to spoil, its bad values, the error expected).
BLOCKING = [
    ("signal_demand", {"rollout_id": 50, "step_target": 8, "timeout_s": 5}, "pipeline_id", BAD_IDS, "pipeline_id"),
    (
        "signal_demand",
        {"rollout_id": 50, "step_target": 8, "timeout_s": 5},
        "rollout_id",
        [-1, "0", 1.5, None],
        "rollout_id",
    ),
    ("signal_demand", {"rollout_id": 50, "step_target": 8, "timeout_s": 5}, "step_target", BAD_STEPS, "step_target"),
    ("signal_demand", {"rollout_id": 50, "step_target": 8, "timeout_s": 5}, "timeout_s", BAD_TIMEOUTS, "timeout_s"),
    (
        "request_gpus",
        {"cluster": ACTOR_TRAIN, "priority": Priority.ACTOR_TRAINING, "timeout_s": 5},
        "cluster",
        BAD_CLUSTERS,
        "cluster",
    ),
    (
        "request_gpus",
        {"cluster": ACTOR_TRAIN, "priority": Priority.ACTOR_TRAINING, "timeout_s": 5},
        "priority",
        BAD_PRIORITIES,
        "priority",
    ),
    (
        "request_gpus",
        {"cluster": ACTOR_TRAIN, "priority": Priority.ACTOR_TRAINING, "timeout_s": 5},
        "timeout_s",
        BAD_TIMEOUTS,
        "timeout_s",
    ),
    ("release", {"cluster": ACTOR_TRAIN}, "cluster", BAD_CLUSTERS, "cluster"),
    ("release", {"cluster": ACTOR_TRAIN}, "pipeline_id", BAD_IDS, "pipeline_id"),
    ("register_pipeline", {"clusters": {ACTOR_INFER: ClusterSpec(1, (0, 9))}}, "pipeline_id", ["q1"], "out of range"),
    ("register_pipeline", {"clusters": seed_clusters((0, 1))}, "pipeline_id", BAD_IDS, "pipeline_id"),
]
#: Hot-path hooks: bad arguments are dropped with a log line, never raised.
HOT = [
    ("bump_completed", {"rollout_id": 0, "count": 1}, "count", BAD_COUNTS),
    ("bump_completed", {"rollout_id": 0, "count": 1}, "pipeline_id", BAD_IDS + ["ghost"]),
    ("bump_completed", {"rollout_id": 0, "count": 1}, "rollout_id", [-1, "0", None, 1.5]),
    ("begin_progress_batch", {"rollout_id": 0, "step_target": 8}, "step_target", BAD_STEPS),
    ("begin_progress_batch", {"rollout_id": 0, "step_target": 8}, "initial_completed", [9, -1, "0"]),
    ("begin_progress_batch", {"rollout_id": 0, "step_target": 8}, "rollout_id", [-1, "0", None, True]),
    ("report_preempt", {"dp_rank": 0, "retracted": 1}, "retracted", BAD_COUNTS),
]


def settled(scheduler: LocalScheduler) -> dict:
    """The scheduler's state once no cycle is running or due (two equal snapshots in a row)."""
    seen: list[dict] = []

    def stable() -> bool:
        seen.append(comparable(scheduler.snapshot()))
        return len(seen) > 1 and seen[-1] == seen[-2]

    wait_until(stable, 10, "the scheduler settled", interval_s=0.02)
    return seen[-1]


class BadInputMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.scheduler = LocalScheduler(4, 4, policy="gap_ratio")
        self.hooks = {p: hooks_on("local", {"scheduler": self.scheduler}, Engines(p)) for p in ("p0", "p1")}
        for pid, train in (("p0", (0, 1)), ("p1", (2, 3))):
            self.hooks[pid].register_pipeline(
                pipeline_id=pid, clusters=seed_clusters(train), limits=PipelineLimits(max_step_target=MAX_STEP)
            )
        self.phase = {"p0": "idle", "p1": "idle"}
        self.rollout = {"p0": 0, "p1": 0}
        self.rejections = 0

    def teardown(self) -> None:
        for hooks in self.hooks.values():
            hooks.plugin_manager.backend.close()
        self.scheduler.close()

    # -- good calls: a pipeline's life -------------------------------------------------------------

    @rule(pid=st.sampled_from(["p0", "p1"]))
    def step(self, pid):
        hooks, phase = self.hooks[pid], self.phase[pid]
        if phase == "idle":
            grant = hooks.signal_demand(pipeline_id=pid, rollout_id=self.rollout[pid], step_target=8, timeout_s=10)
            assert grant.dp_ranks
            hooks.begin_progress_batch(pipeline_id=pid, rollout_id=self.rollout[pid], step_target=8)
            self.phase[pid] = "rolling"
        elif phase == "rolling":
            hooks.bump_completed(pipeline_id=pid, rollout_id=self.rollout[pid], count=8)
            hooks.end_progress_batch(pipeline_id=pid, rollout_id=self.rollout[pid])
            grant = hooks.request_gpus(
                pipeline_id=pid, cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=10
            )
            assert grant.gpus == ((0, 1) if pid == "p0" else (2, 3))
            self.phase[pid] = "training"
        else:
            hooks.release(pipeline_id=pid, cluster=ACTOR_TRAIN)
            self.rollout[pid] += 1
            self.phase[pid] = "idle"

    # -- bad calls ----------------------------------------------------------------------------------

    @rule(case=st.sampled_from(BLOCKING), data=st.data())
    def bad_blocking_call(self, case, data):
        hook, good, spoiled, values, named = case
        value = data.draw(st.sampled_from(values))
        kwargs = {"pipeline_id": "p0", **good, spoiled: value}
        hooks = self.hooks["p0"]
        before = settled(self.scheduler)
        try:
            getattr(hooks, hook)(**kwargs)
        except (InvalidRequestError, NotPipelineOwnerError) as exc:
            assert named in str(exc), (hook, spoiled, value, str(exc))
        else:
            raise AssertionError(f"{hook}({spoiled}={value!r}) was accepted")
        assert settled(self.scheduler) == before, f"{hook}({spoiled}={value!r}) changed the state"
        self.rejections += 1

    @rule(case=st.sampled_from(HOT), data=st.data())
    def bad_hot_path_call(self, case, data):
        hook, good, spoiled, values = case
        value = data.draw(st.sampled_from(values))
        hooks = self.hooks["p0"]
        before = settled(self.scheduler)
        getattr(hooks, hook)(**{"pipeline_id": "p0", **good, spoiled: value})  # must not raise
        assert hooks.plugin_manager.backend.flush_progress(5)
        assert settled(self.scheduler) == before, f"{hook}({spoiled}={value!r}) changed the state"

    @rule()
    @precondition(lambda self: self.rollout["p0"] >= 2)
    def demand_of_an_older_rollout(self):
        """Rollout ids never go back: demand for rollout 0 once p0 signalled rollout 1 or later is
        refused, naming the value, and changes nothing."""
        before = settled(self.scheduler)
        try:
            self.hooks["p0"].signal_demand(pipeline_id="p0", rollout_id=0, step_target=8, timeout_s=5)
        except InvalidRequestError as exc:
            assert "rollout_id 0" in str(exc) and "older than its current rollout" in str(exc), str(exc)
        else:
            raise AssertionError("demand of an older rollout was accepted")
        assert settled(self.scheduler) == before, "demand of an older rollout changed the state"
        self.rejections += 1

    @rule(data=st.data())
    @precondition(lambda self: self.phase["p1"] == "training")
    def second_request_for_a_held_stage(self, data):
        before = settled(self.scheduler)
        try:
            self.hooks["p1"].request_gpus(
                pipeline_id="p1", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=1
            )
        except InvalidRequestError as exc:
            assert "already" in str(exc), str(exc)
        else:
            raise AssertionError("a held stage was granted a second time")
        assert settled(self.scheduler) == before

    @invariant()
    def no_gpu_is_double_booked(self):
        self.scheduler.read(lambda: check_state(self.scheduler.service.state))


BadInputMachine.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_bad_input_property = BadInputMachine.TestCase
