"""One test per hook: the front end delivers every argument under its contract name, and the
no-op default answers as documented. The meta-test in test_contract.py requires a
``test_<hook name>`` here for every hook."""

from __future__ import annotations

from rlix_plugin import hookimpl
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, Grant, Priority


class Capture:
    """Implements every hook, recording the arguments it received."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def rlix_register_pipeline(self, pipeline_id, clusters):
        self.seen.append(("register", pipeline_id, clusters))

    @hookimpl
    def rlix_unregister_pipeline(self, pipeline_id, reason):
        self.seen.append(("unregister", pipeline_id, reason))

    @hookimpl
    def rlix_signal_demand(self, pipeline_id, rollout_id, step_target, timeout_s):
        self.seen.append(("signal", pipeline_id, rollout_id, step_target, timeout_s))
        return Grant(pipeline_id, ACTOR_INFER, gpus=(0,), dp_ranks=(0,), scheduled=True)

    @hookimpl
    def rlix_begin_progress_batch(  # written before rollout_id was added: a subset still works
        self, pipeline_id, mode, adapter_id, target_weight_version, step_target, initial_completed
    ):
        self.seen.append(
            ("begin", pipeline_id, mode, adapter_id, target_weight_version, step_target, initial_completed)
        )

    @hookimpl
    def rlix_bump_completed(self, pipeline_id, rollout_id, mode, adapter_id, target_weight_version, count):
        self.seen.append(("bump", pipeline_id, rollout_id, mode, adapter_id, target_weight_version, count))

    @hookimpl
    def rlix_end_progress_batch(self, pipeline_id, rollout_id, mode, adapter_id):
        self.seen.append(("end", pipeline_id, rollout_id, mode, adapter_id))

    @hookimpl
    def rlix_report_preempt(self, pipeline_id, dp_rank, worker_url, retracted):
        self.seen.append(("preempt", pipeline_id, dp_rank, worker_url, retracted))

    @hookimpl
    def rlix_request_gpus(self, pipeline_id, cluster, priority, step_target, timeout_s):
        self.seen.append(("request", pipeline_id, cluster, priority, step_target, timeout_s))
        return Grant(pipeline_id, cluster, gpus=(0, 1), scheduled=True)

    @hookimpl
    def rlix_release(self, pipeline_id, cluster):
        self.seen.append(("release", pipeline_id, cluster))

    @hookimpl
    def rlix_resize_infer(self, pipeline_id, dp_ranks_to_remove, dp_ranks_to_add):
        if pipeline_id != "mine":
            return None
        self.seen.append(("resize", pipeline_id, dp_ranks_to_remove, dp_ranks_to_add))
        return tuple(sorted(dp_ranks_to_add))


def test_rlix_register_pipeline(rlix_hooks, rlix_register):
    capture = Capture()
    rlix_register(capture)
    clusters = {ACTOR_INFER: ClusterSpec(1, (0, 1)), ACTOR_TRAIN: ClusterSpec(2, (0, 1))}
    rlix_hooks.register_pipeline(pipeline_id="p1", clusters=clusters)
    assert capture.seen == [("register", "p1", clusters)]


def test_rlix_unregister_pipeline(rlix_hooks, rlix_register):
    capture = Capture()
    rlix_register(capture)
    rlix_hooks.unregister_pipeline(pipeline_id="p1", reason="finished")
    assert capture.seen == [("unregister", "p1", "finished")]


def test_rlix_signal_demand(rlix_hooks, rlix_register):
    grant = rlix_hooks.signal_demand(pipeline_id="p1", rollout_id=3, step_target=64, timeout_s=5.0)
    assert grant == Grant("p1", ACTOR_INFER, scheduled=False), "no-op default: unscheduled grant"
    capture = Capture()
    rlix_register(capture)
    grant = rlix_hooks.signal_demand(pipeline_id="p1", rollout_id=3, step_target=64, timeout_s=5.0)
    assert capture.seen == [("signal", "p1", 3, 64, 5.0)]
    assert grant.scheduled and grant.dp_ranks == (0,)


def test_rlix_begin_progress_batch(rlix_hooks, rlix_register):
    capture = Capture()
    rlix_register(capture)
    rlix_hooks.begin_progress_batch(
        pipeline_id="p1",
        rollout_id=7,
        step_target=32,
        target_weight_version=4,
        initial_completed=2,
        mode="lora",
        adapter_id="a",
    )
    assert capture.seen == [("begin", "p1", "lora", "a", 4, 32, 2)]


def test_rlix_bump_completed(rlix_hooks, rlix_register):
    capture = Capture()
    rlix_register(capture)
    rlix_hooks.bump_completed(pipeline_id="p1", rollout_id=7, count=8, target_weight_version=4)
    assert capture.seen == [("bump", "p1", 7, "full", None, 4, 8)]


def test_rlix_end_progress_batch(rlix_hooks, rlix_register):
    capture = Capture()
    rlix_register(capture)
    rlix_hooks.end_progress_batch(pipeline_id="p1", rollout_id=7, mode="lora", adapter_id="a")
    assert capture.seen == [("end", "p1", 7, "lora", "a")]


def test_rlix_report_preempt(rlix_hooks, rlix_register):
    capture = Capture()
    rlix_register(capture)
    rlix_hooks.report_preempt(pipeline_id="p1", dp_rank=2, worker_url="http://e2", retracted=3)
    assert capture.seen == [("preempt", "p1", 2, "http://e2", 3)]


def test_rlix_request_gpus(rlix_hooks, rlix_register):
    grant = rlix_hooks.request_gpus(pipeline_id="p1", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING)
    assert grant == Grant("p1", ACTOR_TRAIN, scheduled=False)
    capture = Capture()
    rlix_register(capture)
    grant = rlix_hooks.request_gpus(
        pipeline_id="p1", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=9.0
    )
    assert capture.seen == [("request", "p1", ACTOR_TRAIN, 1, None, 9.0)]
    assert type(capture.seen[0][3]) is int, "priority crosses the hook as a plain int"
    assert grant.gpus == (0, 1)


def test_rlix_release(rlix_hooks, rlix_register):
    capture = Capture()
    rlix_register(capture)
    rlix_hooks.release(pipeline_id="p1", cluster=ACTOR_TRAIN)
    assert capture.seen == [("release", "p1", ACTOR_TRAIN)]


def test_rlix_resize_infer(rlix_hooks, rlix_register):
    assert rlix_hooks.resize_infer(pipeline_id="mine", dp_ranks_to_add=(1,)) is None, "no owner: None"
    capture = Capture()
    rlix_register(capture)
    assert rlix_hooks.resize_infer(pipeline_id="mine", dp_ranks_to_remove=[0], dp_ranks_to_add=[2, 1]) == (1, 2)
    assert capture.seen == [("resize", "mine", (0,), (2, 1))]
    assert rlix_hooks.resize_infer(pipeline_id="someone-else", dp_ranks_to_add=(1,)) is None
