"""Read-only views of the scheduler state: the snapshot (JSON-able, for the CLI and tests) and
the diagnostic text a timeout or the watchdog prints. Pure."""

from __future__ import annotations

import dataclasses
from typing import Any

from rlix_plugin.hookspecs import ACTOR_INFER

from .ownership import Owner
from .state import SchedulerState


def snapshot(state: SchedulerState, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything an operator needs to see who holds which GPU and why, as plain data."""
    now = state.clock()
    pipelines: dict[str, Any] = {}
    for pid, spec in sorted(state.pipelines.items()):
        clusters = {}
        for name, cluster in sorted(spec.clusters.items()):
            entry: dict[str, Any] = {"tp": cluster.tp_size, "gpus": list(cluster.gpus)}
            if name == ACTOR_INFER:
                gpus, ranks = state.gen_grant(pid)
                alloc = state.generation.get(pid)
                entry.update(
                    held=alloc is not None,
                    gpus_held=list(gpus),
                    awake_dp_ranks=list(ranks),
                    waking_dp_ranks=sorted(alloc.waking) if alloc else [],
                    sleeping_dp_ranks=sorted(alloc.sleeping) if alloc else [],
                    dp_size=spec.dp_size,
                )
            else:
                stage = state.fixed.get(f"{pid}_{name}")
                entry.update(
                    held=stage is not None,
                    gpus_held=list(stage.gpus) if stage else [],
                    priority=stage.priority if stage else None,
                )
            clusters[name] = entry
        pipelines[pid] = {
            "admitted": pid in state.admitted,
            "clusters": clusters,
            "open_demand": state.open_demand.get(pid),
            # The rollout (epoch) the open demand and the progress below belong to; None before
            # the pipeline's first signal_demand or progress report.
            "rollout": state.demand.epochs.get(pid),
            "remaining": state.remaining(pid),
            "progress": [
                {
                    "mode": s.mode,
                    "adapter_id": s.adapter_id,
                    "completed": s.completed,
                    "step_target": s.step_target,
                    "target_weight_version": s.target_weight_version,
                }
                for s in state.progress.get(pid, {}).values()
            ],
            "fenced": state.fenced.get(pid),
            "releasing": sorted(state.planned_releases[pid].ranks) if pid in state.planned_releases else None,
            # What it declared at registration (PipelineLimits): why its engines are planned as
            # they are (a quota, or a batch that makes them sleep between rollouts).
            "limits": dataclasses.asdict(state.limits[pid]),
        }
    pending: dict[str, list[dict[str, Any]]] = {}
    for request in sorted(state.pending.values(), key=lambda r: (r.priority, r.seq)):
        pending.setdefault(str(request.priority), []).append(
            {
                "cluster_id": request.cluster_id,
                "pipeline_id": request.pipeline_id,
                "cluster": request.cluster,
                "step_target": request.step_target,
                "waiting_s": round(now - request.enqueued_at, 3),
            }
        )
    holders = [_holder(state, owner) for owner in state.owner]
    gpu_cells = [_gpu(state, gpu, owner) for gpu, owner in enumerate(state.owner)]
    result = {
        "moves_in_flight": len(state.moves),
        "pool": {"num_gpus": state.pool.num_gpus, "gpus_per_node": state.pool.gpus_per_node},
        "idle_gpus": state.idle_gpus(),
        "gpu_holders": holders,
        "gpus": gpu_cells,
        "open_demand": dict(sorted(state.open_demand.items())),
        "pending": pending,
        "pipelines": pipelines,
    }
    if extra:
        result.update(extra)
    return result


def _holder(state: SchedulerState, owner: Owner) -> str | None:
    """A GPU's holder as operators read it; engines in transition say so."""
    if owner is None or isinstance(owner, str):
        return owner
    pid, rank = owner
    name = f"{pid}_{ACTOR_INFER}[dp{rank}]"
    alloc = state.generation.get(pid)
    if alloc is not None and rank in alloc.waking:
        return f"{name} (waking)"
    if alloc is not None and rank in alloc.sleeping:
        return f"{name} (falling asleep)"
    return name


#: What a GPU is doing, as operators read it (the ``state`` of each entry of ``snapshot()["gpus"]``).
GPU_STATES = ("idle", "awake", "waking", "falling_asleep", "training", "reserved")


def _gpu(state: SchedulerState, gpu: int, owner: Owner) -> dict[str, Any]:
    """One GPU: its holder (pipeline, cluster, DP rank for an engine) and what it is doing:
    ``awake``, ``waking`` or ``falling_asleep`` (an engine), ``training`` (a stage of priority 0-5
    holds it), ``reserved`` (a move keeps it for a stage that is not granted yet) or ``idle``."""
    entry: dict[str, Any] = {"gpu": gpu, "pipeline": None, "cluster": None, "dp_rank": None, "state": "idle"}
    if type(owner) is tuple:
        pid, rank = owner
        alloc = state.generation.get(pid)
        phase = (
            "waking"
            if alloc is not None and rank in alloc.waking
            else "falling_asleep"
            if alloc is not None and rank in alloc.sleeping
            else "awake"
        )
        entry.update(pipeline=pid, cluster=ACTOR_INFER, dp_rank=rank, state=phase)
    elif isinstance(owner, str):
        fixed = state.fixed.get(owner)
        request = state.pending.get(owner)
        holder = fixed or request
        if holder is not None:
            entry.update(
                pipeline=holder.pipeline_id,
                cluster=holder.cluster,
                state="training" if fixed is not None else "reserved",
            )
    return entry


def diagnostic(state: SchedulerState, headline: str = "") -> str:
    """A multi-line explanation of who holds what and who waits: the text a stall reports."""
    snap = snapshot(state)
    lines = [headline] if headline else []
    lines.append(f"open demand (pipeline -> step target): {snap['open_demand'] or 'none'}")
    by_holder: dict[str, list[int]] = {}
    for gpu, holder in enumerate(snap["gpu_holders"]):
        by_holder.setdefault(holder or "idle", []).append(gpu)
    lines.append("GPU holders: " + "; ".join(f"{h}: {g}" for h, g in sorted(by_holder.items())))
    if snap["pending"]:
        for priority, requests in sorted(snap["pending"].items()):
            waiting = ", ".join(f"{r['cluster_id']} ({r['waiting_s']:.1f}s)" for r in requests)
            lines.append(f"pending at priority {priority}: {waiting}")
    else:
        lines.append("pending: none")
    for pid, info in snap["pipelines"].items():
        progress = (
            ", ".join(
                f"{p['mode']}{'/' + p['adapter_id'] if p['adapter_id'] else ''} {p['completed']}/{p['step_target']}"
                for p in info["progress"]
            )
            or "no progress"
        )
        infer = info["clusters"][ACTOR_INFER]
        extra = f" FENCED: {info['fenced']}" if info["fenced"] else ""
        rollout = "" if info["rollout"] is None else f"rollout {info['rollout']} "
        lines.append(
            f"{pid}: awake dp {infer['awake_dp_ranks']} of {infer['dp_size']}, {rollout}{progress}, "
            f"remaining {info['remaining']}{extra}"
        )
    return "\n".join(lines)


__all__ = ["GPU_STATES", "diagnostic", "snapshot"]
