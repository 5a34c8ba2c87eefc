"""The demand race of the seed scenario (docs/design.md, F1), reproduced: with the pre-fix
semantics the watchdog stops the run for one pipeline; with the fix the same scenario completes (see test_run_local).

How the pre-fix semantics are defined (``RunOptions(legacy_demand=True)``), following the seed
document:

* scheduler: ``durable_demand=False`` -- the planner ignores the durable open-demand registry and
  sees a pipeline's generation demand only while its generation request is pending, or through
  progress reports of a pipeline that still has an awake engine;
* framework: no ``signal_demand`` before a rollout. The generation cluster is requested once,
  before the first rollout (``request_gpus(actor_infer, GENERATION, step_target)``, blocking until
  an engine is awake), the way a framework that keeps its engines between rollouts did; every
  rollout then only does ``begin_progress_batch`` -> dispatch.

What happens: a pipeline shows no demand for a moment -- its batch ended, or its engines were just
granted and its ``begin`` has not landed yet -- so the planner gives all its engines to the peer,
which keeps them; its next ``begin`` comes from a pipeline with no awake engine and is invisible. It waits with open demand and no
engine -- the seed's "No progress for 30.0s" on rollout 2 -- until the watchdog fires.

The scenario is the seed's in the seed document's world -- rlix's gap-ratio policy, engines that
switch instantly -- with P2 starting one (scenario) second later, so that P1 finishes its
first rollout clearly first, as in the seed's runs. With identical timing both pipelines can end
their batches within one scheduling cycle; then neither shows demand, both trainings preempt
everything, and *both* hang -- the same bug, but not the one-loser picture this test pins down.
"""

from __future__ import annotations

import dataclasses

from rlix_plugin.reference.harness.runner import RunOptions, run_scenario
from rlix_plugin.scenario import Scenario, bundled_scenario

from .support import TIME_SCALE

STALL_TIMEOUT_S = 1.5  # far above any legitimate wait of the scaled scenario (max_stall ~ 10 ms)


def staggered_seed() -> Scenario:
    seed = bundled_scenario("seed").with_switch_costs(0.0).with_policy("gap_ratio")
    p1, p2 = seed.pipelines
    return seed.with_pipelines((p1, dataclasses.replace(p2, start_delay_seconds=1.0)))


def test_pre_fix_semantics_make_the_watchdog_fire_for_one_pipeline():
    result = run_scenario(
        staggered_seed(), RunOptions(time_scale=TIME_SCALE, stall_timeout_s=STALL_TIMEOUT_S, legacy_demand=True)
    )
    assert not result.ok
    assert len(result.stalled) == 1, result.stalled
    # Which pipeline loses the race depends on whose report lands first; exactly one does.
    loser = result.stalled[0]
    (winner,) = {"P1", "P2"} - {loser}
    assert result.pipelines[loser].max_stall_s > STALL_TIMEOUT_S
    assert result.pipelines[winner].samples_completed > result.pipelines[loser].samples_completed
    assert result.pipelines[winner].max_stall_s < STALL_TIMEOUT_S
    diagnostic = result.diagnostic
    assert f"pipeline(s) {loser} (" in diagnostic and "open demand and no awake engine" in diagnostic
    # The scheduler's view: registry, holders, pending per priority, progress per pipeline.
    assert "open demand (pipeline -> step target):" in diagnostic
    assert "GPU holders:" in diagnostic and f"{winner}_actor_infer" in diagnostic
    assert "pending" in diagnostic
    assert f"{loser}: awake dp [] of 4" in diagnostic
    # The framework's view names the stalled pipeline's rollout and its zero awake engines.
    assert f"{loser}: generating" in diagnostic and "awake engines 0/4, open demand yes" in diagnostic
    # The stop released everything: the scheduler ended with no holder (checked by the recorder).
    assert all(h is None for h in result.recorder.frames[-1].holders)


def test_with_the_fix_the_same_scenario_completes():
    result = run_scenario(staggered_seed(), RunOptions(time_scale=TIME_SCALE, stall_timeout_s=STALL_TIMEOUT_S))
    assert result.ok, result.diagnostic
    assert [m.rollouts_completed for m in result.pipelines.values()] == [5, 5]
    assert max(m.max_stall_s for m in result.pipelines.values()) < STALL_TIMEOUT_S
