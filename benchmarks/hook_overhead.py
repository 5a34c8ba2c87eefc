"""Caller-side cost of ``bump_completed`` through the typed front end.

    python benchmarks/hook_overhead.py --json
    python benchmarks/hook_overhead.py --backend ray --json

Cases: (a) the no-op default only (the hot-path guard skips the hook call), (b) one plugin that
counts the calls. Each figure is the median of ``--repeat`` timings of ``--calls`` calls, in
nanoseconds per call. Target: (a) <= 100 ns.

``--backend ray`` (see ``_hook_overhead_ray.py``): the same caller-side figure with the ray
backend on a local Ray cluster (target <= 5 us), and the progress RPCs per second that reach the
scheduler actor while the rollout bumps at ``--rate`` (10k) samples per second.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(__file__))

from _stats import emit, median

from rlix_plugin import Hooks, get_plugin_manager, hookimpl


class CountingPlugin:
    def __init__(self) -> None:
        self.samples = 0

    @hookimpl
    def rlix_bump_completed(self, count: int) -> None:
        self.samples += count


def ns_per_call(hooks: Hooks, calls: int, repeat: int) -> float:
    bump = hooks.bump_completed
    timer = timeit.Timer("bump(pipeline_id='p0', rollout_id=0, count=1)", globals={"bump": bump})
    return median([t / calls * 1e9 for t in timer.repeat(repeat=repeat, number=calls)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["noop", "ray"], default="noop")
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rate", type=float, default=10_000, help="ray: bumps per second for the RPC count")
    parser.add_argument("--duration", type=float, default=5.0, help="ray: seconds of paced bumps")
    parser.add_argument("--pipelines", type=int, default=1, help="ray: pipelines sharing the bump rate")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.backend == "ray":
        from _hook_overhead_ray import run_ray

        emit(run_ray(args.calls, args.repeat, args.rate, args.duration, args.pipelines, ns_per_call), args.json)
        return

    noop = Hooks(get_plugin_manager("noop", autoload=False))
    pm = get_plugin_manager("noop", autoload=False)
    counter = CountingPlugin()
    pm.register(counter, name="counter")
    recording = Hooks(pm)

    # A plain method call with the same arguments, for scale.
    class Plain:
        def bump_completed(self, *, pipeline_id: str, rollout_id: int, count: int = 1) -> None:
            return None

    plain = Plain().bump_completed
    plain_ns = median(
        [
            t / args.calls * 1e9
            for t in timeit.Timer("f(pipeline_id='p0', rollout_id=0, count=1)", globals={"f": plain}).repeat(
                args.repeat, args.calls
            )
        ]
    )
    noop_ns = ns_per_call(noop, args.calls, args.repeat)
    plugin_ns = ns_per_call(recording, args.calls, args.repeat)
    assert counter.samples == args.calls * args.repeat, "the plugin saw every call"
    emit(
        {
            "backend": "noop",
            "calls": args.calls,
            "repeat": args.repeat,
            "noop_ns_per_call": round(noop_ns, 1),
            "one_plugin_ns_per_call": round(plugin_ns, 1),
            "plain_method_ns_per_call": round(plain_ns, 1),
            "noop_target_ns": 100,
            "noop_meets_target": noop_ns <= 100,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
