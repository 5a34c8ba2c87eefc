"""The rollout epoch in the demand ledger: what a report of an older, the same or a newer rollout
does, and that bad input changes nothing."""

from __future__ import annotations

import pytest

from rlix_plugin.hookspecs import ACTOR_INFER, InvalidRequestError, Priority
from rlix_plugin.progress import ProgressReport
from rlix_plugin.scheduler.demand import APPLIED, IGNORED, RETIRED
from rlix_plugin.scheduler.persist import dump_state, load_state

from .support import FakeClock, end, plain, progress, seed_clusters, seed_state, settle

GEN = Priority.GENERATION


def test_a_demand_of_an_older_rollout_is_refused_and_changes_nothing():
    state = seed_state()
    state.open_rollout("p1", 7)
    state.request("p1", ACTOR_INFER, GEN, 8)
    state.apply_progress(progress("p1", 8, 3, rollout_id=7, begin=True))
    before = plain(state)
    with pytest.raises(InvalidRequestError, match="rollout_id 6 of pipeline 'p1' is older than its current rollout 7"):
        state.open_rollout("p1", 6)
    for bad in (-1, "7", None, True):
        with pytest.raises(InvalidRequestError, match="rollout_id must be an int >= 0"):
            state.open_rollout("p1", bad)
    assert plain(state) == before


def test_the_same_rollout_again_is_a_retry_and_keeps_its_streams():
    state = seed_state()
    state.open_rollout("p1", 2)
    state.apply_progress(progress("p1", 8, 3, rollout_id=2, begin=True))
    state.open_rollout("p1", 2)
    assert state.remaining("p1") == 5
    state.open_rollout("p1", 3)
    assert "p1" not in state.progress, "a newer rollout's epoch drops the older streams"


def test_release_closes_the_epoch_until_a_newer_rollout():
    state = seed_state()
    state.open_rollout("p1", 0)
    state.request("p1", ACTOR_INFER, GEN, 8)
    settle(state)
    state.apply_progress(progress("p1", 8, 3, begin=True))
    state.release("p1", ACTOR_INFER)
    assert state.apply_progress(progress("p1", 8, 6)) == IGNORED, "a late count of the released rollout"
    assert state.apply_progress(progress("p1", 8, 0, begin=True)) == IGNORED
    assert "p1" not in state.progress and "p1" not in state.open_demand
    assert state.apply_progress(progress("p1", 8, 1, rollout_id=1, begin=True)) == APPLIED
    assert state.remaining("p1") == 7


def test_progress_of_a_newer_rollout_starts_its_epoch_without_a_signal():
    """A framework that reports progress but never signals demand still moves from rollout to
    rollout; the older rollout's late end is then ignored."""
    state = seed_state()
    state.apply_progress(progress("p1", 8, 8, rollout_id=0, begin=True))
    state.apply_progress(progress("p1", 8, 1, rollout_id=1, begin=True))
    assert state.apply_progress(end("p1", rollout_id=0)) == IGNORED
    assert state.demand.epochs["p1"] == 1 and state.remaining("p1") == 7
    assert state.apply_progress(end("p1", rollout_id=1)) == APPLIED, "no open demand to retire"


def test_a_malformed_report_names_the_bad_value_and_changes_nothing():
    state = seed_state()
    state.apply_progress(progress("p1", 8, 3, rollout_id=1, begin=True))
    before = plain(state)
    cases = [
        (ProgressReport("progress", "p1", -1, "full", None, 8, 3, 0), "rollout_id must be an int >= 0"),
        (ProgressReport("progress", "p1", "1", "full", None, 8, 3, 0), "rollout_id must be an int >= 0"),
        (ProgressReport("bogus", "p1", 1, "full", None, 8, 3, 0), "kind must be one of"),
        (ProgressReport("progress", "p1", 1, "lora", "a", 8, 3, 0), "mixing in 'lora'"),
        (("progress", "p1"), "not a progress report"),
    ]
    for report, message in cases[:4]:
        with pytest.raises(InvalidRequestError, match=message):
            state.apply_progress(report)
    with pytest.raises(InvalidRequestError, match=cases[4][1]):
        state.apply_progress(cases[4][0])  # type: ignore[arg-type]
    assert plain(state) == before


def test_epochs_survive_a_restart_and_a_format_1_record_still_loads():
    clock = FakeClock()
    state = seed_state(clock=clock)
    state.open_rollout("p1", 4)
    state.request("p1", ACTOR_INFER, GEN, 8)
    state.apply_progress(progress("p1", 8, 3, rollout_id=4, begin=True))
    state.open_rollout("p2", 9)
    state.release("p2", ACTOR_INFER)
    record = dump_state(state, 1000.0)
    assert record["format"] == 2 and record["epochs"] == {"p1": 4, "p2": 9} and record["closed"] == ["p2"]
    loaded = load_state(record, state.pool, clock, 1000.0)
    assert loaded.demand.epochs == {"p1": 4, "p2": 9} and loaded.demand.closed == {"p2"}
    assert loaded.apply_progress(end("p1", rollout_id=3)) == IGNORED
    assert loaded.apply_progress(end("p1", rollout_id=4)) == RETIRED

    old = {k: v for k, v in record.items() if k not in ("epochs", "closed")}
    old.update(format=1, retired_streams={"p1": [["full", None]]})
    restored = load_state(old, state.pool, clock, 1000.0)
    assert restored.demand.epochs == {} and restored.remaining("p1") == 5, "its streams and demand are kept"
    assert restored.apply_progress(progress("p1", 8, 4, rollout_id=4)) == APPLIED, "the first report names the epoch"
    assert restored.demand.epochs == {"p1": 4} and restored.remaining("p1") == 4


def test_the_snapshot_and_the_diagnostic_name_each_pipelines_rollout():
    from rlix_plugin.scheduler.report import diagnostic, snapshot

    state = seed_state()
    assert snapshot(state)["pipelines"]["p1"]["rollout"] is None
    state.open_rollout("p1", 4)
    state.request("p1", ACTOR_INFER, GEN, 8)
    state.apply_progress(progress("p1", 8, 3, rollout_id=4, begin=True))
    assert snapshot(state)["pipelines"]["p1"]["rollout"] == 4
    assert snapshot(state)["pipelines"]["p2"]["rollout"] is None
    text = diagnostic(state)
    assert "p1: awake dp [] of 4, rollout 4 full 3/8, remaining 5" in text, text
    assert "p2: awake dp [] of 4, no progress" in text, text


def test_the_snapshot_shows_what_each_pipeline_declared():
    from rlix_plugin.hookspecs import PipelineLimits
    from rlix_plugin.scheduler.report import snapshot

    state = seed_state()
    state.register("p3", seed_clusters((0,)), None, PipelineLimits(max_bundles=2, samples_per_engine=64))
    pipelines = snapshot(state)["pipelines"]
    assert pipelines["p3"]["limits"] == {
        "max_step_target": None,
        "min_bundles": 1,
        "max_bundles": 2,
        "samples_per_engine": 64,
    }
    assert pipelines["p1"]["limits"]["samples_per_engine"] == 1
