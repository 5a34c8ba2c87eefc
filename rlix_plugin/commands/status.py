"""``rlix-plugin status``: who holds which GPU and why, from the live scheduler on a Ray cluster.

Shows each pipeline's allocations (GPU ids per cluster, awake DP ranks), open demand, progress
(completed/target per stream), the pending queue per priority with waiting times, and idle GPUs.
``--json`` prints the scheduler's snapshot as is; ``--watch`` refreshes it. ``--why PIPELINE``
explains in one paragraph why that pipeline holds what it holds now, citing the decisions behind
it (``rlix-plugin events`` lists them all).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

#: Columns of the per-cluster table.
_HEADER = ("PIPELINE", "CLUSTER", "TP", "MAPPING", "HELD", "DETAIL")


def render(snap: dict[str, Any]) -> str:
    """The snapshot as text for an operator. Pure: no Ray needed."""
    pool = snap.get("pool", {})
    lines = [
        f"rlix scheduler: {pool.get('num_gpus')} GPUs ({pool.get('gpus_per_node')} per node), "
        f"{len(snap.get('pipelines', {}))} pipeline(s), {snap.get('cycles', 0)} cycle(s)"
        + (", resizing now" if snap.get("resizing") else ""),
        f"idle GPUs: {snap.get('idle_gpus') or 'none'}",
        "",
    ]
    restarted = (snap.get("scheduler") or {}).get("restarted_at")
    if restarted or snap.get("recovering"):
        waiting = snap.get("recovering") or []
        epoch = (snap.get("scheduler") or {}).get("epoch")
        lines.insert(
            1,
            f"restarted from its saved state (epoch {epoch})"
            + (f"; waiting for {', '.join(waiting)} to reattach: nothing is planned until then" if waiting else ""),
        )
    rows: list[tuple[str, ...]] = [_HEADER]
    notes: list[str] = []
    for pid, info in snap.get("pipelines", {}).items():
        first = True
        for name, cluster in info.get("clusters", {}).items():
            if "awake_dp_ranks" in cluster:
                detail = f"awake dp {cluster['awake_dp_ranks']} of {cluster['dp_size']}"
            else:
                detail = f"priority {cluster['priority']}" if cluster.get("held") else "not held"
            rows.append(
                (
                    pid if first else "",
                    name,
                    str(cluster["tp"]),
                    _ids(cluster["gpus"]),
                    _ids(cluster["gpus_held"]) if cluster.get("held") else "-",
                    detail,
                )
            )
            first = False
        progress = (
            ", ".join(
                f"{p['mode']}{'/' + p['adapter_id'] if p.get('adapter_id') else ''} {p['completed']}/{p['step_target']}"
                for p in info.get("progress", [])
            )
            or "no stream"
        )
        note = (
            f"{pid}: open demand {info.get('open_demand') if info.get('open_demand') is not None else 'none'}; "
            f"progress {progress}; remaining {info.get('remaining')}"
        )
        if not info.get("admitted", True):
            note += "; NOT ADMITTED"
        if info.get("releasing"):
            note += f"; releasing dp {info['releasing']}"
        if info.get("fenced"):
            note += f"; FENCED: {info['fenced']}"
        notes.append(note)
    if len(rows) == 1:
        lines.append("no pipelines registered")
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
        lines.extend("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in rows)
        lines.append("")
        lines.extend(notes)
    lines.append("")
    pending = snap.get("pending", {})
    if pending:
        lines.append("pending:")
        for priority, requests in sorted(pending.items(), key=lambda kv: int(kv[0])):
            waiting = ", ".join(f"{r['cluster_id']} ({r['waiting_s']:.1f}s)" for r in requests)
            lines.append(f"  priority {priority}: {waiting}")
    else:
        lines.append("pending: none")
    for pid, reason in (snap.get("reaped") or {}).items():
        lines.append(f"reaped {pid}: {reason}")
    return "\n".join(lines)


def _ids(gpus: list[int]) -> str:
    return "[" + ",".join(str(g) for g in gpus) + "]"


def run(args: argparse.Namespace) -> int:
    from rlix_plugin import arguments as check

    from .cluster import scheduler_client

    check.timeout(args.timeout, "--timeout")
    if args.watch is not None:
        check.timeout(args.watch, "--watch")
    check.integer(args.count, "--count", 0)
    if args.why is not None:
        check.pipeline_id(args.why, "--why")
    with scheduler_client(args.address) as client:
        if args.why is not None:
            return _why(client, args)
        count = 0
        while True:
            snap = client.snapshot(timeout_s=args.timeout)
            if args.json:
                print(json.dumps(snap, sort_keys=True, indent=None if args.watch else 2), flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    print("\x1b[H\x1b[2J", end="")  # redraw in place
                print(render(snap), flush=True)
            count += 1
            if not args.watch or (args.count and count >= args.count):
                return 0
            time.sleep(args.watch)  # the refresh period the operator asked for


def _why(client: Any, args: argparse.Namespace) -> int:
    from rlix_plugin.scheduler.why import explain

    snap = client.snapshot(timeout_s=args.timeout)
    decisions = client.events(0, args.why, limit=100_000, timeout_s=args.timeout)["decisions"]
    paragraph = explain(snap, decisions, args.why, time.time())
    print(json.dumps({"pipeline": args.why, "why": paragraph}) if args.json else paragraph)
    return 0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("status", help="show the live scheduler: allocations, demand, progress, queue")
    parser.add_argument("--address", default="auto", help="Ray cluster address (default: auto, the running cluster)")
    parser.add_argument("--json", action="store_true", help="print the scheduler's snapshot as JSON")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until interrupted",
    )
    parser.add_argument("--count", type=int, default=0, help="with --watch: stop after this many refreshes")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the scheduler")
    parser.add_argument("--why", metavar="PIPELINE", help="explain why PIPELINE holds what it holds now")
    parser.set_defaults(run=run)
