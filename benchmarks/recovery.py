"""Time to recover from a scheduler crash, and what the crashes cost the pipelines.

    python benchmarks/recovery.py --json                  # >= 20 kills, about 2 minutes
    python benchmarks/recovery.py --kills 40 --json

On a local Ray cluster (4 logical GPUs), the seed scenario of the reference framework (two
pipelines sharing the pool, what ``rlix-plugin demo --backend ray`` runs) is run again and again
while the scheduler actor's process is SIGKILLed -- every ``--mid-resize-every``-th kill while a
resize it asked for is running, the others at once -- ``--interval`` seconds after the previous
recovery, until ``--kills`` kills were made. Per kill (:class:`rlix_plugin.testing.chaos.Kill`):

* ``restored_s``: kill -> the restarted actor has loaded the saved state;
* ``recovered_s``: kill -> every pipeline reattached and reconciled (planning resumes): the
  time to recover, from the scheduler's own clock readings;
* ``answered_s``: kill -> a call made right after the kill answered by the new incarnation (what
  a blocked pipeline waits; includes Ray noticing that the process died).

And per run: every pipeline must finish every rollout (a lost grant would stall it: the
watchdog stops the run), and the trace recorded from the framework side must never show a GPU
taken while another holder had it (``double_holds``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import ray
from _stats import emit, median, percentile

from rlix_plugin import connect
from rlix_plugin.hookspecs import RlixError
from rlix_plugin.reference.harness.runner import RunOptions, execute
from rlix_plugin.scenario import bundled_scenario
from rlix_plugin.testing.chaos import Kill, SchedulerKiller

#: Workers' logs stay in Ray's log files: stdout is the JSON.
INIT_OPTIONS = {
    "num_cpus": 2,
    "num_gpus": 4,
    "include_dashboard": False,
    "logging_level": "ERROR",
    "object_store_memory": 80 * 1024 * 1024,
    "log_to_driver": False,
}


def _killer(args: argparse.Namespace, kills: list[Kill], done: threading.Event, errors: list[str]) -> None:
    """Kill the run's scheduler until the run ends or enough kills were made overall."""
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = connect(create_if_missing=False)
                if len(client.describe()["pipelines"]) == 2:
                    break
            except RlixError:
                pass
            if done.is_set() or time.monotonic() > deadline:
                return
            time.sleep(0.05)
        killer = SchedulerKiller(client)
        while len(kills) < args.kills and not done.wait(args.interval):
            mid = (len(kills) + 1) % args.mid_resize_every == 0
            try:
                kill = killer.kill_mid_resize(timeout_s=5.0) if mid else killer.kill()
            except TimeoutError as exc:  # the run ended while we watched for a resize
                if not done.is_set():
                    errors.append(f"kill: {exc}")
                return
            kills.append(kill)
    except Exception as exc:
        errors.append(f"killer: {exc!r}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    ray.init(**INIT_OPTIONS)
    scenario = bundled_scenario("seed")
    kills: list[Kill] = []
    runs: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        while len(kills) < args.kills and len(runs) < args.max_runs:
            done = threading.Event()
            thread = threading.Thread(target=_killer, args=(args, kills, done, errors), daemon=True)
            thread.start()
            before = len(kills)
            try:
                result = execute(
                    scenario,
                    RunOptions(
                        backend="ray",
                        time_scale=args.time_scale,
                        stall_timeout_s=30.0,
                        timeout_s=300.0,
                        resize_timeout_s=20.0,
                    ),
                )
            finally:
                done.set()
                thread.join(120)
            runs.append(
                {
                    "ok": result.ok,
                    "kills": len(kills) - before,
                    "rollouts": {n: m.rollouts_completed for n, m in result.pipelines.items()},
                    "double_holds": len(result.recorder.double_holds),
                    "wall_s": round(result.wall_s, 3),
                    "errors": result.errors[:3],
                }
            )
    finally:
        ray.shutdown()
    expected = sum(p.rollouts for p in scenario.pipelines)
    recovered = [k.recovered_s for k in kills]
    figures: dict[str, Any] = {
        "benchmark": "recovery",
        "scenario": scenario.name,
        "time_scale": args.time_scale,
        "kills": len(kills),
        "mid_resize_kills": sum(1 for k in kills if k.in_doubt),
        "runs": len(runs),
        "runs_ok": sum(1 for r in runs if r["ok"]),
        "rollouts_lost": sum(expected - sum(r["rollouts"].values()) for r in runs),
        "double_holds": sum(r["double_holds"] for r in runs),
        "errors": errors + [e for r in runs for e in r["errors"]],
        "target_recovered_p99_s": 2.0,
    }
    for name in ("restored_s", "recovered_s", "answered_s"):
        values = [getattr(k, name) for k in kills]
        if values:
            figures[name] = {
                "p50": round(median(values), 3),
                "p99": round(percentile(values, 99), 3),
                "max": round(max(values), 3),
            }
    figures["target_met"] = (
        bool(recovered)
        and percentile(recovered, 99) <= 2.0
        and figures["double_holds"] == 0
        and figures["rollouts_lost"] == 0
        and figures["runs_ok"] == len(runs)
    )
    return figures


def _quietly(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`run` with Ray's messages (the raylet reports every kill on the driver's stdout) sent
    to stderr: stdout is the JSON."""
    with contextlib.redirect_stdout(sys.stderr):
        return run(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills to make in all (default 20)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds after a recovery before the next kill")
    parser.add_argument("--mid-resize-every", type=int, default=4, help="every n-th kill waits for a resize")
    parser.add_argument("--time-scale", type=float, default=1.0, help="scenario durations multiplied by this")
    parser.add_argument("--max-runs", type=int, default=12, help="give up after this many runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.kills < 1 or args.interval < 0 or args.mid_resize_every < 1 or args.time_scale <= 0:
        parser.error("--kills and --mid-resize-every must be >= 1, --interval >= 0, --time-scale > 0")
    emit(_quietly(args), args.json)


if __name__ == "__main__":
    main()
