"""Calibration: every bundled live scenario run by the reference framework in real time and by the
simulator in virtual time, under the scenario's policy.

    python benchmarks/calibration.py --json [--repeat 3] [--time-scale 1.0]

Figures per scenario: live and simulated wall seconds and engine switches (live: medians of
``--repeat`` runs), and their errors (simulated / live - 1). Targets (issue: capacity planning):
wall within 10 %, switches within 20 %. The simulator is deterministic, so it runs once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _stats import emit

from rlix_plugin.reference.harness.runner import RunOptions, execute
from rlix_plugin.scenario import bundled_scenario, bundled_scenarios
from rlix_plugin.simulate.run import simulate


def calibrate(name: str, repeat: int, time_scale: float) -> dict[str, object]:
    scenario = bundled_scenario(name)
    simulated = simulate(scenario.scaled(time_scale))
    walls, switches = [], []
    for _ in range(repeat):
        live = execute(scenario, RunOptions(time_scale=time_scale, stall_timeout_s=30, timeout_s=300))
        if not live.ok:
            return {"scenario": name, "ok": False, "diagnostic": live.diagnostic}
        walls.append(live.wall_s)
        switches.append(live.switches)
    live_wall, live_switches = statistics.median(walls), statistics.median(switches)
    return {
        "scenario": name,
        "ok": True,
        "live_wall_s": round(live_wall, 3),
        "sim_wall_s": round(simulated.wall_s, 3),
        "wall_error": round(simulated.wall_s / live_wall - 1, 4),
        "live_switches": live_switches,
        "sim_switches": simulated.switches,
        "switch_error": round(simulated.switches / live_switches - 1, 4) if live_switches else None,
        "sim_cpu_s": round(simulated.cpu_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--scenario", action="append", choices=bundled_scenarios())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.repeat < 1 or args.time_scale <= 0:
        parser.error(f"--repeat must be >= 1 and --time-scale > 0, got {args.repeat}, {args.time_scale}")
    rows = [calibrate(name, args.repeat, args.time_scale) for name in (args.scenario or bundled_scenarios())]
    emit({"time_scale": args.time_scale, "repeat": args.repeat, "scenarios": rows}, args.json)


if __name__ == "__main__":
    main()
