"""``rlix-plugin kill PIPELINE`` and ``rlix-plugin drain``: operator actions on a Ray cluster's
scheduler. Both present the operator credential from ``$RLIX_OPERATOR_TOKEN`` (the one the
scheduler was started with; a scheduler started without one refuses them).

``kill`` kills every named actor in the pipeline's namespace (its coordinator, the framework's
engine actors) and then unregisters it, so its GPUs go back to the pool only once nothing of it
can still use them. ``drain`` refuses new registrations from now on and waits (up to
``--timeout``) until the registered pipelines have finished; exit 0 when none is left, 1 if some
still run at the timeout.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rlix_plugin import arguments as check


def run_kill(args: argparse.Namespace) -> int:
    from rlix_plugin.ray.client import operator_token

    from .cluster import scheduler_client

    check.pipeline_id(args.pipeline, "PIPELINE")
    with scheduler_client(args.address) as client:
        killed = client.kill_pipeline(args.pipeline, operator_token(), args.reason)
        print(
            json.dumps({"pipeline": args.pipeline, "killed_actors": killed})
            if args.json
            else f"killed pipeline {args.pipeline}: {', '.join(killed) or 'no named actors'}; its GPUs are free"
        )
        return 0


def run_drain(args: argparse.Namespace) -> int:
    from rlix_plugin.ray.client import operator_token

    from .cluster import scheduler_client

    timeout_s = check.timeout(args.timeout, "--timeout")
    with scheduler_client(args.address) as client:
        remaining = client.drain(operator_token())
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))  # the operator's polling period
            remaining = list(client.describe()["pipelines"])
        if args.json:
            print(json.dumps({"draining": True, "pipelines": remaining}))
        else:
            print(
                "drained: no pipeline is registered"
                if not remaining
                else f"still registered after {timeout_s:g}s: {', '.join(remaining)}"
            )
        return 0 if not remaining else 1


def add_parser(commands: Any) -> None:
    kill = commands.add_parser(
        "kill",
        help="kill a pipeline and free its GPUs (operator)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kill.add_argument("pipeline", metavar="PIPELINE", help="the pipeline id")
    kill.add_argument("--reason", default="killed by an operator", help="recorded for the pipeline's callers")
    kill.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    kill.add_argument("--json", action="store_true")
    kill.set_defaults(run=run_kill)
    drain = commands.add_parser(
        "drain",
        help="admit no new pipeline and wait for the running ones (operator)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    drain.add_argument("--timeout", type=float, default=600.0, metavar="S", help="longest wait (default 600)")
    drain.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    drain.add_argument("--json", action="store_true")
    drain.set_defaults(run=run_drain)
