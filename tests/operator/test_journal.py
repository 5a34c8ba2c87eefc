"""The decision log: every committed change with its cause, bounded in memory, and the paragraph
of ``status --why`` built from it. On the local backend (no Ray), pipelines driven through the
hooks one call at a time."""

from __future__ import annotations

import time

import pytest

from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, InvalidRequestError, PipelineGoneError, Priority
from rlix_plugin.scheduler.journal import DecisionLog, describe
from rlix_plugin.scheduler.why import explain

from ..waiting import wait_until
from .support import SlowEngines, clusters, hooks_on


@pytest.fixture
def scheduler():
    sched = LocalScheduler(4, 4, resize_timeout_s=5)
    yield sched
    sched.close()


def quiet(scheduler):
    """Wait until no move is in flight (every decision's engines have answered)."""
    wait_until(lambda: scheduler.snapshot()["moves_in_flight"] == 0, 10, "the moves in flight to finish")


def pipeline(scheduler, pid, train, **engine_options):
    engines = SlowEngines(pid, switch_s=0.0, **engine_options)
    hooks = hooks_on("local", {"scheduler": scheduler}, engines)
    hooks.register_pipeline(pipeline_id=pid, clusters=clusters(train))
    return hooks, engines


def two_pipelines_one_training(scheduler):
    """p1 rolls out on every GPU, p2's demand takes engines from it, then p2's training takes
    GPUs 2-3 from whoever's engines are there."""
    h1, _ = pipeline(scheduler, "p1", (0, 1))
    h2, _ = pipeline(scheduler, "p2", (2, 3))
    h1.signal_demand(pipeline_id="p1", rollout_id=0, step_target=8, timeout_s=10)
    quiet(scheduler)
    h2.signal_demand(pipeline_id="p2", rollout_id=0, step_target=8, timeout_s=10)
    quiet(scheduler)
    h2.request_gpus(pipeline_id="p2", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=10)
    quiet(scheduler)
    return h1, h2


def of(decisions, kind, pipeline=None):
    return [d for d in decisions if d["kind"] == kind and (pipeline is None or d["pipeline"] == pipeline)]


def test_grants_preemptions_and_donations_carry_the_planners_reasons(scheduler):
    two_pipelines_one_training(scheduler)
    decisions = scheduler.decisions()
    assert [d["seq"] for d in decisions] == list(range(1, len(decisions) + 1))
    assert all(a["t"] <= b["t"] for a, b in zip(decisions, decisions[1:], strict=False))
    assert [d["pipeline"] for d in of(decisions, "register")] == ["p1", "p2"]
    assert [(d["pipeline"], d["detail"]["step_target"]) for d in of(decisions, "demand_open")] == [("p1", 8), ("p2", 8)]
    first_wake = of(decisions, "wake", "p1")[0]
    assert first_wake["reason"] == "idle GPUs" and first_wake["dp_ranks"] == [0, 1, 2, 3]
    donations = of(decisions, "donate", "p1")
    assert donations and all(d["reason"] == "donated to p2" and d["detail"]["to"] == "p2" for d in donations)
    received = [d for d in of(decisions, "wake", "p2") if d["detail"].get("from") == "p1"]
    assert received and all(d["reason"] == "donated to p2" for d in received)
    preempted = of(decisions, "preempt")
    assert preempted, [describe(d) for d in decisions]
    assert all(
        d["reason"] == "preempted by p2_actor_train"
        and d["detail"]["by"] == "p2_actor_train"
        and set(d["gpus"]) <= {2, 3}
        for d in preempted
    )
    grant = [d for d in of(decisions, "grant", "p2") if d["cluster"] == ACTOR_TRAIN]
    assert len(grant) == 1 and grant[0]["gpus"] == [2, 3] and grant[0]["detail"]["priority"] == 1
    victims = {d["pipeline"]: d["dp_ranks"] for d in preempted}
    assert grant[0]["detail"]["preempted"] == victims
    assert all(f"{p} dp {r}" in grant[0]["reason"] for p, r in victims.items())
    # One GPU per DP rank here: every engine decision names the GPUs of its ranks.
    assert all(d["gpus"] == d["dp_ranks"] for d in decisions if d["cluster"] == ACTOR_INFER and d["dp_ranks"])


def test_every_engine_decision_is_confirmed_and_the_log_explains_the_state(scheduler):
    two_pipelines_one_training(scheduler)
    decisions = scheduler.decisions()
    for decision in decisions:
        if decision["kind"] in ("preempt", "donate", "sleep"):
            confirmations = [
                d
                for d in decisions
                if d["seq"] > decision["seq"]
                and d["kind"] == "asleep"
                and d["pipeline"] == decision["pipeline"]
                and d["dp_ranks"] == decision["dp_ranks"]
            ]
            assert confirmations, f"no confirmation of {describe(decision)}"
            assert confirmations[0]["reason"] == decision["reason"] and confirmations[0]["detail"]["seconds"] >= 0
    # Replaying the confirmations gives exactly the engines the snapshot shows awake.
    awake: dict[str, set[int]] = {}
    for d in decisions:
        if d["kind"] == "awake":
            awake.setdefault(d["pipeline"], set()).update(d["dp_ranks"])
        elif d["kind"] == "asleep":
            awake.setdefault(d["pipeline"], set()).difference_update(d["dp_ranks"])
    snap = scheduler.snapshot()
    assert {p: sorted(r) for p, r in awake.items()} == {
        p: info["clusters"][ACTOR_INFER]["awake_dp_ranks"] for p, info in snap["pipelines"].items()
    }


def test_demand_releases_and_unregistering_are_recorded_with_their_cause(scheduler):
    hooks, _ = pipeline(scheduler, "p1", (0, 1))
    hooks.signal_demand(pipeline_id="p1", rollout_id=0, step_target=4, timeout_s=10)
    hooks.begin_progress_batch(pipeline_id="p1", rollout_id=0, step_target=4)
    hooks.bump_completed(pipeline_id="p1", rollout_id=0, count=4)
    hooks.end_progress_batch(pipeline_id="p1", rollout_id=0)
    wait_until(lambda: of(scheduler.decisions(), "demand_retire"), 10, "the end of the stream retiring the demand")
    hooks.request_gpus(pipeline_id="p1", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=10)
    hooks.release(pipeline_id="p1", cluster=ACTOR_TRAIN)
    hooks.signal_demand(pipeline_id="p1", rollout_id=1, step_target=4, timeout_s=10)
    hooks.release(pipeline_id="p1", cluster=ACTOR_INFER)
    hooks.unregister_pipeline(pipeline_id="p1", reason="finished its job")
    decisions = scheduler.decisions()
    retired = of(decisions, "demand_retire")
    assert [d["reason"] for d in retired] == ["its last progress stream ended", "its generation cluster was released"]
    releases = of(decisions, "release")
    assert (releases[0]["cluster"], releases[0]["gpus"], releases[0]["reason"]) == (ACTOR_TRAIN, [0, 1], "released")
    assert releases[1]["cluster"] == ACTOR_INFER and releases[1]["reason"].startswith("generation cluster released")
    last = decisions[-1]
    assert (last["kind"], last["pipeline"], last["reason"], last["gpus"]) == (
        "unregister",
        "p1",
        "finished its job",
        [],
    )
    sleeps = of(decisions, "sleep", "p1")
    assert sleeps and sleeps[-1]["reason"] == "released"


def test_a_fence_records_the_failure_and_what_it_cancelled(scheduler):
    hooks, _ = pipeline(scheduler, "p3", (0, 1), fail_wake="engine exploded while loading weights")
    with pytest.raises(PipelineGoneError, match="engine exploded"):
        hooks.signal_demand(pipeline_id="p3", rollout_id=0, step_target=8, timeout_s=10)
    decisions = scheduler.decisions()
    fence = of(decisions, "fence", "p3")
    assert len(fence) == 1 and "engine exploded while loading weights" in fence[0]["reason"]
    assert fence[0]["detail"]["cancelled"] == ["p3_actor_infer"]
    assert set(fence[0]["gpus"]) == {0, 1, 2, 3}, "a fenced pipeline keeps the GPUs its engines may use"
    retired = of(decisions, "demand_retire", "p3")
    assert retired and retired[0]["reason"].startswith("fenced: ")
    assert not of(decisions, "awake", "p3"), "a failed wake is not recorded as done"
    why = explain(scheduler.snapshot(), decisions, "p3", time.time())
    assert "It has no open demand" in why and "It is fenced (wake of DP ranks" in why
    assert "engine exploded while loading weights" in why


def test_the_log_is_bounded_and_read_by_number():
    log = DecisionLog(capacity=3)
    for i in range(5):
        log.append(float(i), "grant", "p1" if i % 2 else "p2", f"reason {i}")
    assert len(log) == 3 and (log.first_seq, log.last_seq) == (3, 5)
    assert [d.seq for d in log.since(0)] == [3, 4, 5]
    assert [d.seq for d in log.since(4)] == [5] and log.since(5) == []
    assert [d.seq for d in log.since(0, pipeline="p1")] == [4]
    assert [d.seq for d in log.since(0, limit=2)] == [3, 4]
    assert [d.seq for d in log.tail(2)] == [4, 5] and [d.seq for d in log.tail(5, pipeline="p2")] == [3, 5]
    with pytest.raises(ValueError, match="capacity"):
        DecisionLog(capacity=0)


def test_why_explains_in_one_paragraph_what_a_pipeline_holds(scheduler):
    h1, _ = two_pipelines_one_training(scheduler)
    snap, decisions = scheduler.snapshot(), scheduler.decisions()
    p2 = explain(snap, decisions, "p2", time.time())
    assert "\n" not in p2 and p2.startswith("p2 holds actor_train on GPUs [2, 3] (priority 1, granted")
    assert "after preempting" in p2 and "Its open demand is 8 samples" in p2
    p1 = explain(snap, decisions, "p1", time.time())
    awake = snap["pipelines"]["p1"]["clusters"][ACTOR_INFER]["awake_dp_ranks"]
    assert f"{len(awake)} of 4 generation engines awake (dp {awake}" in p1
    assert "went to sleep" in p1 and ("preempted by p2_actor_train" in p1 or "donated to p2" in p1)
    with pytest.raises(InvalidRequestError, match=r"'ghost' is not registered; registered: \['p1', 'p2'\]"):
        explain(snap, decisions, "ghost", time.time())
    h1.release(pipeline_id="p1", cluster=ACTOR_INFER)
    h1.unregister_pipeline(pipeline_id="p1", reason="done for today")
    with pytest.raises(InvalidRequestError, match=r"'p1' is not registered; it left .* ago: done for today"):
        explain(scheduler.snapshot(), scheduler.decisions(), "p1", time.time())


class Broken:
    """An observer that raises on every call."""

    def __getattr__(self, name):
        def fail(*args):
            raise RuntimeError(f"broken observer: {name}")

        return fail


def test_a_broken_observer_never_breaks_scheduling(scheduler, caplog):
    scheduler.read(lambda: scheduler.service.add_observer(Broken()))
    hooks, _ = pipeline(scheduler, "p1", (0, 1))
    grant = hooks.signal_demand(pipeline_id="p1", rollout_id=0, step_target=8, timeout_s=10)
    assert grant.dp_ranks
    assert "scheduler observer failed" in caplog.text
    assert of(scheduler.decisions(), "grant", "p1"), "the other observers still saw everything"
