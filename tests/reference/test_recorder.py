"""The recording: both feeds give the same picture of who held which GPU, demand and waits."""

from __future__ import annotations

from rlix_plugin.reference.harness.recorder import Recorder, holder_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_scheduler_owner_values_map_to_holders():
    assert holder_of(None) is None
    assert holder_of(("P1", 3)) == ("P1", "infer", 3)
    assert holder_of("P1_actor_train") == ("P1", "train", None)
    assert holder_of("my_pipe_critic") == ("my_pipe", "critic", None)


def test_framework_feed_spans_demand_and_pending():
    clock = Clock()
    rec = Recorder(4, clock)
    rec.add_pipeline("P1", [(0,), (1,), (2,), (3,)], (0, 1), step_target=16)
    clock.now = 1.0
    rec.phase("P1", "rollout", 0, framework_feed=True)  # demand open, no engine yet: pending p6
    assert rec.frames[-1].pending == ((6, 1),) and rec.frames[-1].open_demand == (("P1", 16),)
    clock.now = 1.5
    rec.engines_changed("P1", (0, 1, 2, 3))
    assert rec.frames[-1].pending == ()
    clock.now = 3.0
    rec.phase("P1", "wait-train", 0, framework_feed=True)
    assert rec.frames[-1].pending == ((1, 1),) and rec.frames[-1].open_demand == ()
    clock.now = 3.2
    rec.engines_changed("P1", (2, 3))  # training preempts the engines on its GPUs
    rec.phase("P1", "train", 0, framework_feed=True)
    clock.now = 4.0
    rec.phase("P1", "end", -1, framework_feed=True)
    rec.engines_changed("P1", ())
    rec.finish()
    spans = rec.gpu_intervals()
    assert spans[0] == [(1.5, 3.2, ("P1", "infer", 0)), (3.2, 4.0, ("P1", "train", None))]
    assert spans[3] == [(1.5, 4.0, ("P1", "infer", 3))]
    assert rec.demand_series()["P1"] == [(0.0, 0), (1.0, 16), (3.0, 0)]
    assert rec.pending_series()[1] == [(0.0, 0), (3.0, 1), (3.2, 0)]
    assert rec.phase_intervals()["P1"] == [
        (1.0, 3.0, "rollout 0"),
        (3.0, 3.2, "wait for train GPUs 0"),
        (3.2, 4.0, "train 0"),
    ]


def test_a_gpu_taken_while_another_holder_has_it_is_a_double_hold():
    clock = Clock()
    rec = Recorder(2, clock)
    rec.add_pipeline("P1", [(0,), (1,)], (0,), step_target=8)
    rec.add_pipeline("P2", [(0,), (1,)], (1,), step_target=8)
    rec.engines_changed("P1", (0, 1))
    clock.now = 1.0
    rec.engines_changed("P1", (0,))  # P1 lets GPU 1 go first ...
    rec.phase("P2", "train", 0, framework_feed=True)  # ... so P2 training there is fine
    rec.phase("P2", "idle", 0, framework_feed=True)  # done with it before its release
    assert rec.double_holds == []
    clock.now = 2.0
    rec.engines_changed("P2", (0,))  # but GPU 0 is still P1's engine's
    assert [(h.t, h.gpu, h.holder, h.taker) for h in rec.double_holds] == [
        (2.0, 0, ("P1", "infer", 0), ("P2", "infer", 0))
    ]
    # An idle phase is no span of its own on the timeline.
    assert [label for _, _, label in rec.phase_intervals()["P2"]] == ["train 0"]


class FakeState:
    def __init__(self, owner, open_demand, pending):
        self.owner, self.open_demand, self.pending = owner, open_demand, pending


class FakeRequest:
    def __init__(self, priority):
        self.priority = priority


def test_scheduler_feed_records_only_changes():
    clock = Clock()
    rec = Recorder(2, clock)
    rec.add_pipeline("P1", [(0,), (1,)], (0,), step_target=8)
    state = FakeState([("P1", 0), None], {"P1": 8}, {"P1_actor_train": FakeRequest(1)})
    rec.scheduler_listener("request", state)
    clock.now = 0.5
    rec.scheduler_listener("progress", state)  # nothing changed: no frame
    assert len(rec.frames) == 1
    assert rec.frames[0].holders == (("P1", "infer", 0), None)
    assert rec.frames[0].pending == ((1, 1),) and rec.frames[0].open_demand == (("P1", 8),)
    state.owner = ["P1_actor_train", None]
    rec.scheduler_listener("commit", state)
    assert len(rec.frames) == 2 and rec.frames[1].t == 0.5
