"""``rlix-plugin dashboard``: a live page of a Ray cluster's pool, served on localhost.

Open the printed address in a browser: the GPU grid (one cell per GPU, coloured by holder and
state -- awake, waking, falling asleep, training, reserved, idle), the open demand and the pending
queue, the last decisions with their reasons, and a scrolling ownership timeline, updated twice a
second. The page binds 127.0.0.1 only and only reads the scheduler. Runs until interrupted (or for
``--duration`` seconds).
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

from rlix_plugin import arguments as check

DEFAULT_PORT = 8299


def run(args: argparse.Namespace) -> int:
    from rlix_plugin.dashboard.server import DashboardServer
    from rlix_plugin.dashboard.sources import RaySource

    from .cluster import scheduler_client

    port = check.integer(args.port, "--port", 0, 65535)
    duration = check.timeout(args.duration, "--duration") if args.duration is not None else None
    with scheduler_client(args.address) as client:
        server = DashboardServer(RaySource(client, args.address), port=port)
        try:
            print(f"rlix dashboard: {server.url} (Ctrl-C to stop)", flush=True)
            threading.Event().wait(duration)  # serve until interrupted, or for --duration
        finally:
            server.close()
    return 0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "dashboard",
        help="serve a live page of the pool on localhost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--address", default="auto", help="Ray cluster address (default: auto, the running cluster)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.set_defaults(run=run)
