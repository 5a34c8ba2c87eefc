"""Calibration: the simulator reproduces a live run of the reference framework (wall time within
10 %, engine switches within 20 %), on a bundled scenario run both ways at half its durations.

The simulated pipelines are the live ones' loop in virtual time on the same scheduler core, so
what differs is what real time adds: thread wake-ups, lock hand-offs, the progress coalescer's
wall clock. docs/simulate.md has the table for every bundled scenario.
"""

from __future__ import annotations

from rlix_plugin.reference.harness.runner import RunOptions, execute
from rlix_plugin.scenario import bundled_scenario
from rlix_plugin.simulate.run import simulate

#: long_tail: two pipelines, staggered, heavy-tailed samples; about 8 s live at this scale.
SCENARIO, TIME_SCALE = "long_tail", 0.5


def test_simulated_and_live_runs_agree():
    scenario = bundled_scenario(SCENARIO)
    simulated = simulate(scenario.scaled(TIME_SCALE))
    live = execute(scenario, RunOptions(time_scale=TIME_SCALE, stall_timeout_s=20, timeout_s=120))
    assert live.ok, live.diagnostic
    assert simulated.rollouts == sum(p.rollouts for p in scenario.pipelines)
    assert abs(simulated.wall_s / live.wall_s - 1) <= 0.10, (simulated.wall_s, live.wall_s)
    assert abs(simulated.switches / live.switches - 1) <= 0.20, (simulated.switches, live.switches)
    # The simulated run is orders of magnitude cheaper than the live one.
    assert simulated.cpu_s < live.wall_s / 10
