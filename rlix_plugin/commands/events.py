"""``rlix-plugin events``: the scheduler's decision log -- every committed change with its cause.

Prints the decisions the scheduler keeps (the newest 10,000), oldest first, one line each:
grants, preemptions and donations with the planner's reason, wakes and sleeps and how long the
engines took, fences with the failure, releases, open demand opened and retired. ``--follow``
then waits for new ones until interrupted (or ``--count`` were printed); ``--pipeline`` keeps one
pipeline's; ``--json`` prints JSON lines (the fields: docs/operators.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rlix_plugin import arguments as check

#: Seconds one long poll of ``--follow`` waits in the scheduler before asking again.
FOLLOW_POLL_S = 10.0


def run(args: argparse.Namespace) -> int:
    from rlix_plugin.scheduler.journal import describe

    from .cluster import scheduler_client

    if args.pipeline is not None:
        check.pipeline_id(args.pipeline, "--pipeline")
    if args.last is not None:
        check.integer(args.last, "--last", 1)
    count = check.integer(args.count, "--count", 0)
    timeout_s = check.timeout(args.timeout, "--timeout")
    printed = 0

    def emit(decisions: list[dict[str, Any]]) -> bool:
        """Print; True when --count is reached."""
        nonlocal printed
        for decision in decisions:
            print(json.dumps(decision, sort_keys=True) if args.json else describe(decision), flush=True)
            printed += 1
            if count and printed >= count:
                return True
        return False

    with scheduler_client(args.address) as client:
        page = client.events(0, args.pipeline, limit=100_000, timeout_s=timeout_s)
        decisions = page["decisions"][-args.last :] if args.last else page["decisions"]
        if emit(decisions) or not args.follow:
            return 0
        since = page["last"]
        while True:
            page = client.events(since, args.pipeline, limit=1000, wait_s=FOLLOW_POLL_S, timeout_s=timeout_s)
            if page["first"] > since + 1:
                print(
                    f"rlix-plugin: {page['first'] - since - 1} decisions were dropped before they could be "
                    "printed (the scheduler keeps the newest ones)",
                    file=sys.stderr,
                )
            if emit(page["decisions"]):
                return 0
            since = page["decisions"][-1]["seq"] if page["decisions"] else page["last"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "events",
        help="the scheduler's decision log: who got which GPUs and why",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--follow", "-f", action="store_true", help="then wait for new decisions")
    parser.add_argument("--pipeline", metavar="P", help="only the decisions about pipeline P")
    parser.add_argument("--json", action="store_true", help="JSON lines, one decision each")
    parser.add_argument("--last", type=int, metavar="N", help="start with the newest N decisions only")
    parser.add_argument("--count", type=int, default=0, metavar="N", help="exit after printing N decisions")
    parser.add_argument("--address", default="auto", help="Ray cluster address (default: auto, the running cluster)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the scheduler")
    parser.set_defaults(run=run)
