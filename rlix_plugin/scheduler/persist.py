"""The scheduler's state as plain data and back: what a restarted scheduler rehydrates from. Pure.

:func:`dump_state` turns a :class:`~.state.SchedulerState` into a JSON-able dict holding
everything a restart needs -- registrations (clusters, limits, switch costs and what was measured
of them), admissions, who holds every GPU, fixed allocations, generation allocations (awake ranks
and ranks in transition), pending requests, the open-demand registry, rollout epochs and progress streams,
planned releases and fences. :func:`load_state` rebuilds the state from it. The stores that keep
the dict (:mod:`.store`, :mod:`rlix_plugin.ray.kv_store`) never look inside it.

Times: the state's clock is monotonic, and a restarted scheduler may read another one. The record
keeps every time as its age at the save (seconds before ``saved_at``, a wall-clock reading), and
loading puts it that long before the save, counted back from now on the new clock.

Moves in flight are not kept: their resize calls belonged to the process that died, and a call
may or may not have reached the engines. Loading keeps the ranks they were moving in ``waking``
and ``sleeping`` under the move id :data:`IN_DOUBT` when those ranks still hold their GPUs (a
wake not yet issued holds only part of its GPUs, or none, and is dropped), and frees the GPUs
reserved for stage grants not made yet (those requests stay pending). What the engines really did
is settled by :mod:`.rehydrate` with the pipeline's own report.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from rlix_plugin.hookspecs import (
    ClusterSpec,
    InvalidRequestError,
    PipelineLimits,
    RlixError,
    StreamProgress,
)

from .ownership import Owner, Ownership
from .state import FixedAllocation, GenerationAllocation, PendingRequest, PlannedRelease, SchedulerState
from .topology import PoolTopology, validate_pipeline

#: Version of the record's layout. 2: rollout epochs (``epochs``, ``closed``) instead of the
#: retired streams of format 1. A format-1 record still loads: its pipelines have no epoch until
#: their next ``signal_demand`` or progress report names one, and its retired streams are
#: dropped (they only filtered late reports, which the epochs now ignore). Any other is refused.
FORMAT = 2
#: Formats :func:`load_state` reads.
READABLE = (1, 2)

#: Move id of a transition whose outcome is unknown after a restart (real move ids start at 1).
IN_DOUBT = 0


class StateFormatError(RlixError):
    """A persisted record that cannot be loaded: another format, another pool, or damaged."""


def dump_state(state: SchedulerState, saved_at: float) -> dict[str, Any]:
    """Everything a restart needs, as JSON-able data. ``saved_at`` is the wall-clock time of the
    save; the state's own clock is read once, for the ages."""
    now = state.clock()

    def age(t: float) -> float:
        return round(now - t, 6)

    pipelines = {}
    for pid, spec in state.pipelines.items():
        limits = state.limits.get(pid, PipelineLimits())
        pipelines[pid] = {
            "clusters": {name: [c.tp_size, list(c.gpus)] for name, c in spec.clusters.items()},
            "limits": [limits.max_step_target, limits.min_bundles, limits.max_bundles, limits.samples_per_engine],
            "estimates": state.estimates.dump(pid, age),
            "admitted": pid in state.admitted,
        }
    demand = state.demand
    return {
        "format": FORMAT,
        "saved_at": saved_at,
        "pool": [state.pool.num_gpus, state.pool.gpus_per_node],
        "pipelines": pipelines,
        "owner": [_owner_out(o) for o in state.owner],
        "fixed": {
            cid: {
                "pipeline_id": a.pipeline_id,
                "cluster": a.cluster,
                "priority": a.priority,
                "gpus": list(a.gpus),
                "age": age(a.since),
            }
            for cid, a in state.fixed.items()
        },
        "generation": {
            pid: {
                "active": sorted(a.active),
                "waking": sorted(a.waking),
                "sleeping": sorted(a.sleeping),
                "age": age(a.since),
                "awake_age": {str(r): age(t) for r, t in a.awake_since.items()},
            }
            for pid, a in state.generation.items()
        },
        "pending": [
            {
                "pipeline_id": r.pipeline_id,
                "cluster": r.cluster,
                "priority": r.priority,
                "step_target": r.step_target,
                "seq": r.seq,
                "age": age(r.enqueued_at),
            }
            for r in sorted(state.pending.values(), key=lambda r: r.seq)
        ],
        "open_demand": dict(demand.open_demand),
        "progress": {
            pid: [[s.mode, s.adapter_id, s.step_target, s.completed, s.target_weight_version] for s in streams.values()]
            for pid, streams in demand.progress.items()
        },
        "epochs": dict(demand.epochs),
        "closed": sorted(demand.closed),
        "retired_age": {pid: age(t) for pid, t in demand.retired_at.items()},
        "rollouts": dict(demand.rollouts),
        "planned_releases": {
            pid: {"ranks": sorted(r.ranks), "drop_cluster": r.drop_cluster, "age": age(r.requested_at)}
            for pid, r in state.planned_releases.items()
        },
        "fenced": dict(state.fenced),
        "stage_seen_age": {pid: age(t) for pid, t in state.stage_seen_at.items()},
        "switches": dict(state.switches),
    }


def load_state(
    data: Mapping[str, Any],
    pool: PoolTopology,
    clock: Callable[[], float],
    now_wall: float,
    into: SchedulerState | None = None,
) -> SchedulerState:
    """Rebuild a state from :func:`dump_state`'s record (see the module docstring for moves that
    were in flight); into ``into``, a state that holds nothing yet, when given (whoever holds it
    -- the planner's core, observers -- then sees the restored state), else a new one.

    :raises StateFormatError: the record is of another format or pool, or damaged (the message
        says what is wrong; nothing is half-loaded: the caller gets no state).
    """
    if not isinstance(data, Mapping) or data.get("format") not in READABLE:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise StateFormatError(f"persisted scheduler state has format {found!r}; this version reads {list(READABLE)}")
    if list(data.get("pool", ())) != [pool.num_gpus, pool.gpus_per_node]:
        raise StateFormatError(
            f"persisted scheduler state is of a pool of {data.get('pool')!r} (GPUs, per node), not "
            f"{[pool.num_gpus, pool.gpus_per_node]}"
        )
    if into is not None and (into.pipelines or into.pool != pool):
        raise StateFormatError("a persisted state can only be loaded into an empty state of the same pool")
    try:
        loaded = _load(data, pool, clock, now_wall)
    except StateFormatError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, InvalidRequestError) as exc:
        raise StateFormatError(f"persisted scheduler state is damaged: {type(exc).__name__}: {exc}") from None
    if into is None:
        return loaded
    # Only once the whole record loaded: a damaged one leaves ``into`` as it was.
    vars(into).update(vars(loaded))
    return into


def _load(data: Mapping[str, Any], pool: PoolTopology, clock: Callable[[], float], now_wall: float) -> SchedulerState:
    # A time ``a`` seconds before the save is ``a + (now_wall - saved_at)`` seconds before now.
    now = clock()
    elapsed = max(0.0, now_wall - float(data["saved_at"]))

    def clock_of(age: float) -> float:
        return now - elapsed - float(age)

    state = SchedulerState(pool, clock)
    for pid, entry in data["pipelines"].items():
        clusters = {
            name: ClusterSpec(tp_size=int(tp), gpus=tuple(int(g) for g in gpus))
            for name, (tp, gpus) in entry["clusters"].items()
        }
        state.pipelines[pid] = validate_pipeline(pool, pid, clusters)
        # Records saved before samples_per_engine existed have three fields (it was 1 then).
        max_step, min_bundles, max_bundles, samples_per_engine = [*entry["limits"], 1][:4]
        state.limits[pid] = PipelineLimits(max_step, min_bundles, max_bundles, samples_per_engine)
        if entry["estimates"] is not None:
            state.estimates.load(pid, entry["estimates"], clock_of)
        else:
            state.estimates.register(pid, None)
        if entry["admitted"]:
            state.admitted.add(pid)
    owners = [_owner_in(o) for o in data["owner"]]
    if len(owners) != pool.num_gpus:
        raise StateFormatError(f"persisted ownership table has {len(owners)} entries for {pool.num_gpus} GPUs")
    for cid, a in data["fixed"].items():
        _known(state, a["pipeline_id"], f"fixed allocation {cid!r}")
        state.fixed[cid] = FixedAllocation(
            a["pipeline_id"], a["cluster"], int(a["priority"]), tuple(int(g) for g in a["gpus"]), clock_of(a["age"])
        )
        if any(owners[g] != cid for g in state.fixed[cid].gpus):
            raise StateFormatError(f"fixed allocation {cid!r} holds GPUs the ownership table gives to others")
    for pid, a in data["generation"].items():
        spec = _known(state, pid, "generation allocation")
        alloc = GenerationAllocation(pid, active={int(r) for r in a["active"]}, since=clock_of(a["age"]))
        alloc.awake_since = {int(r): clock_of(t) for r, t in a["awake_age"].items()}
        for rank in (int(r) for r in a["sleeping"]):
            alloc.sleeping[rank] = IN_DOUBT  # it held its GPUs until its sleep was confirmed
        for rank in (int(r) for r in a["waking"]):
            if all(owners[g] == (pid, rank) for g in spec.bundles[rank]):
                alloc.waking[rank] = IN_DOUBT  # its GPUs were its own: the wake may have been issued
        state.generation[pid] = alloc
    # GPUs reserved for what no longer exists (a wake not issued, a stage not granted yet) are idle.
    for gpu, owner in enumerate(owners):
        if isinstance(owner, str) and owner not in state.fixed:
            owners[gpu] = None
        elif isinstance(owner, tuple):
            holder = state.generation.get(owner[0])
            if holder is None or owner[1] not in {*holder.active, *holder.waking, *holder.sleeping}:
                owners[gpu] = None
    state.owner = Ownership(entries=owners)
    for r in data["pending"]:
        _known(state, r["pipeline_id"], "pending request")
        request = PendingRequest(
            r["pipeline_id"], r["cluster"], int(r["priority"]), r["step_target"], int(r["seq"]), clock_of(r["age"])
        )
        state.pending[request.cluster_id] = request
    # Requests made after the restart queue behind the restored ones.
    state._seq = itertools.count(max((r.seq for r in state.pending.values()), default=-1) + 1)
    demand = state.demand
    demand.open_demand.update({pid: int(n) for pid, n in data["open_demand"].items()})
    for pid, streams in data["progress"].items():
        demand.progress[pid] = {
            (mode, adapter): StreamProgress(mode, adapter, int(target), int(done), int(version))
            for mode, adapter, target, done, version in streams
        }
    if data["format"] >= 2:
        for pid, rollout_id in data["epochs"].items():
            _known(state, pid, "rollout epoch")
            demand.epochs[pid] = int(rollout_id)
        demand.closed.update(pid for pid in data["closed"] if pid in demand.epochs)
    demand.retired_at.update({pid: clock_of(t) for pid, t in data["retired_age"].items()})
    demand.rollouts.update({pid: int(n) for pid, n in data["rollouts"].items()})
    for pid, r in data["planned_releases"].items():
        state.planned_releases[pid] = PlannedRelease(
            {int(x) for x in r["ranks"]}, bool(r["drop_cluster"]), clock_of(r["age"])
        )
    state.fenced.update(data["fenced"])
    state.stage_seen_at.update({pid: clock_of(t) for pid, t in data["stage_seen_age"].items()})
    state.switches.update({pid: int(n) for pid, n in data["switches"].items()})
    return state


def _known(state: SchedulerState, pipeline_id: str, what: str) -> Any:
    spec = state.pipelines.get(pipeline_id)
    if spec is None:
        raise StateFormatError(f"persisted {what} names pipeline {pipeline_id!r}, which is not registered")
    return spec


def _owner_out(owner: Owner) -> Any:
    return list(owner) if isinstance(owner, tuple) else owner


def _owner_in(value: Any) -> Owner:
    if value is None or isinstance(value, str):
        return value
    pid, rank = value
    if not isinstance(pid, str) or not isinstance(rank, int):
        raise StateFormatError(f"persisted GPU owner {value!r} is neither a cluster id nor [pipeline, rank]")
    return (pid, rank)


__all__ = ["FORMAT", "IN_DOUBT", "READABLE", "StateFormatError", "dump_state", "load_state"]
