"""Scheduler state and the operations that change it, without I/O, threads or clocks of its own.

Every operation validates its input first and raises :class:`InvalidRequestError` (naming the bad
value) before changing anything. Allocation changes other than freeing happen only through
:meth:`SchedulerState.apply`, with a plan the validator accepted.

GPU ownership is kept per GPU in ``owner``: ``None`` (idle), a cluster id string (a fixed-mapping
stage holds it) or a ``(pipeline_id, dp_rank)`` tuple (a generation worker holds it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    MODE_FULL,
    MODE_LORA,
    PROGRESS_MODES,
    ClusterSpec,
    InvalidRequestError,
    PipelineGoneError,
    Priority,
    StreamProgress,
)

from .topology import PipelineSpec, PoolTopology, cluster_id, validate_pipeline

Owner = Union[None, str, tuple[str, int]]
StreamKey = tuple[str, Union[str, None]]


@dataclass
class FixedAllocation:
    """A non-generation cluster holding its whole device mapping."""

    pipeline_id: str
    cluster: str
    priority: int
    gpus: tuple[int, ...]
    since: float


@dataclass
class GenerationAllocation:
    """A pipeline's generation cluster while it is held (requested and not released).

    ``active`` may be empty: the workers were preempted but the cluster is still the pipeline's.
    """

    pipeline_id: str
    active: set[int] = field(default_factory=set)
    since: float = 0.0


@dataclass
class PendingRequest:
    """A blocked ``request_gpus`` (or ``signal_demand``) waiting for the planner."""

    pipeline_id: str
    cluster: str
    priority: int
    step_target: int | None
    seq: int
    enqueued_at: float

    @property
    def cluster_id(self) -> str:
        return cluster_id(self.pipeline_id, self.cluster)


@dataclass
class PlannedRelease:
    """Generation workers a pipeline gives back; ``drop_cluster`` when the whole cluster goes."""

    ranks: set[int]
    drop_cluster: bool
    requested_at: float


@dataclass(frozen=True)
class RequestOutcome:
    """What :meth:`SchedulerState.request` decided: granted now, or enqueued."""

    granted: bool
    gpus: tuple[int, ...] = ()
    dp_ranks: tuple[int, ...] = ()


def _require_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidRequestError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class SchedulerState:
    """Everything the scheduler knows. Mutated only by its methods."""

    def __init__(self, pool: PoolTopology, clock: Callable[[], float]) -> None:
        self.pool = pool
        self.clock = clock
        self.pipelines: dict[str, PipelineSpec] = {}
        self.admitted: set[str] = set()
        self.owner: list[Owner] = [None] * pool.num_gpus
        self.fixed: dict[str, FixedAllocation] = {}
        self.generation: dict[str, GenerationAllocation] = {}
        self.pending: dict[str, PendingRequest] = {}
        #: The durable open-demand registry: pipeline id -> step target of its rollout.
        self.open_demand: dict[str, int] = {}
        self.progress: dict[str, dict[StreamKey, StreamProgress]] = {}
        #: Streams of a finished rollout: their late reports (sent from another process than the
        #: next rollout's demand) are ignored until the stream's next begin.
        self.retired_streams: dict[str, set[StreamKey]] = {}
        self.planned_releases: dict[str, PlannedRelease] = {}
        #: Pipelines whose engines failed a resize: kept out of planning until they unregister.
        self.fenced: dict[str, str] = {}
        self._seq = itertools.count()

    # -- registration -------------------------------------------------------------------------------

    def register(self, pipeline_id: str, clusters: Mapping[str, ClusterSpec]) -> PipelineSpec:
        spec = validate_pipeline(self.pool, pipeline_id, clusters)
        if pipeline_id in self.pipelines:
            raise InvalidRequestError(f"pipeline {pipeline_id!r} is already registered")
        self.pipelines[pipeline_id] = spec
        return spec

    def admit(self, pipeline_id: str) -> None:
        self._spec(pipeline_id, admitted=False)
        self.admitted.add(pipeline_id)

    def unregister(self, pipeline_id: str) -> list[PendingRequest]:
        """Free everything the pipeline holds. Returns its pending requests (now cancelled)."""
        if pipeline_id not in self.pipelines:
            return []
        for cid in [c for c, a in self.fixed.items() if a.pipeline_id == pipeline_id]:
            self._free_fixed(cid)
        alloc = self.generation.pop(pipeline_id, None)
        if alloc is not None:
            spec = self.pipelines[pipeline_id]
            for rank in alloc.active:
                for gpu in spec.bundles[rank]:
                    self.owner[gpu] = None
        cancelled = [r for r in self.pending.values() if r.pipeline_id == pipeline_id]
        for request in cancelled:
            del self.pending[request.cluster_id]
        for registry in (self.open_demand, self.progress, self.retired_streams, self.planned_releases, self.fenced):
            registry.pop(pipeline_id, None)
        self.admitted.discard(pipeline_id)
        del self.pipelines[pipeline_id]
        return cancelled

    def fence(self, pipeline_id: str, reason: str) -> list[PendingRequest]:
        """Keep a pipeline whose engines failed a resize out of planning. Its GPUs stay held (the
        engines may still use them) until it unregisters. Returns its cancelled requests."""
        if pipeline_id not in self.pipelines:
            return []
        self.fenced[pipeline_id] = reason
        cancelled = [r for r in self.pending.values() if r.pipeline_id == pipeline_id]
        for request in cancelled:
            del self.pending[request.cluster_id]
        self.open_demand.pop(pipeline_id, None)
        self.planned_releases.pop(pipeline_id, None)
        return cancelled

    # -- requests and releases ----------------------------------------------------------------------

    def request(
        self, pipeline_id: str, cluster: str, priority: int, step_target: int | None
    ) -> RequestOutcome:
        """Grant at once when the cluster is already held at this priority (a generation cluster
        only with an awake worker); otherwise enqueue. Every GENERATION request writes the
        open-demand registry, whether it enqueues or short-circuits."""
        spec, cid, generation = self.check_request(pipeline_id, cluster, priority, step_target)
        if generation:
            assert step_target is not None
            self.open_demand[pipeline_id] = step_target
            alloc = self.generation.get(pipeline_id)
            if alloc is not None and alloc.active:
                return RequestOutcome(True, self._gen_gpus(spec, alloc.active), tuple(sorted(alloc.active)))
            if alloc is None:
                self.generation[pipeline_id] = GenerationAllocation(pipeline_id, set(), self.clock())
        elif cid in self.fixed:
            return RequestOutcome(True, self.fixed[cid].gpus)
        self.pending[cid] = PendingRequest(pipeline_id, cluster, priority, step_target, next(self._seq), self.clock())
        return RequestOutcome(False)

    def check_request(
        self, pipeline_id: str, cluster: str, priority: int, step_target: int | None
    ) -> tuple[PipelineSpec, str, bool]:
        """Validate a request without changing anything: (spec, cluster id, is generation).

        :raises InvalidRequestError: naming the bad value.
        :raises PipelineGoneError: the pipeline is fenced.
        """
        spec = self._spec(pipeline_id)
        cid = self._cluster(spec, cluster)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 6:
            raise InvalidRequestError(f"priority must be an int in 0..6, got {priority!r}")
        generation = cluster == ACTOR_INFER
        if generation != (priority == Priority.GENERATION):
            raise InvalidRequestError(
                f"cluster {cid!r} must be requested at priority {int(Priority.GENERATION)} "
                "(and only it)" if generation else
                f"priority {priority} (GENERATION) is only for {ACTOR_INFER!r}, not {cid!r}"
            )
        if generation:
            _require_int(f"step_target of {cid!r}", step_target, 1)
        elif step_target is not None:
            raise InvalidRequestError(f"step_target is only for generation requests, got {step_target!r} for {cid!r}")
        if cid in self.pending:
            raise InvalidRequestError(f"a request for {cid!r} is already pending")
        if cid in self.fixed and self.fixed[cid].priority != priority:
            raise InvalidRequestError(
                f"{cid!r} is held at priority {self.fixed[cid].priority}, requested at {priority}; release it first"
            )
        if pipeline_id in self.planned_releases and generation:
            raise InvalidRequestError(f"{cid!r} is being released; wait for the release to finish")
        return spec, cid, generation

    def cancel_request(self, pipeline_id: str, cluster: str) -> bool:
        """Drop a pending request (its caller gave up). True if there was one."""
        request = self.pending.pop(cluster_id(pipeline_id, cluster), None)
        return request is not None

    def release(self, pipeline_id: str, cluster: str) -> bool:
        """Release a cluster. A fixed cluster is freed at once. The generation cluster loses its
        open demand and every awake worker is put to sleep by the next cycle (a planned release);
        returns True when such a resize is needed."""
        spec = self._spec(pipeline_id)
        cid = self._cluster(spec, cluster)
        self.pending.pop(cid, None)
        if cluster != ACTOR_INFER:
            if cid in self.fixed:
                self._free_fixed(cid)
            return False
        # Releasing the generation cluster ends the rollout: its demand and any stream whose end
        # never came are retired with it.
        self.open_demand.pop(pipeline_id, None)
        self.retire_streams(pipeline_id)
        alloc = self.generation.get(pipeline_id)
        if alloc is None:
            return False
        if not alloc.active:
            del self.generation[pipeline_id]
            self.planned_releases.pop(pipeline_id, None)
            return False
        self.planned_releases[pipeline_id] = PlannedRelease(set(alloc.active), True, self.clock())
        return True

    def plan_release(self, pipeline_id: str, dp_ranks: Iterable[int]) -> bool:
        """Give specific generation workers back. True when a resize is needed."""
        spec = self._spec(pipeline_id)
        ranks = set(dp_ranks)
        bad = sorted(r for r in ranks if not isinstance(r, int) or not 0 <= r < spec.dp_size)
        if bad:
            raise InvalidRequestError(f"pipeline {pipeline_id!r}: DP ranks {bad} out of range 0..{spec.dp_size - 1}")
        alloc = self.generation.get(pipeline_id)
        ranks &= alloc.active if alloc is not None else set()
        if not ranks:
            return False
        current = self.planned_releases.get(pipeline_id)
        if current is not None:
            current.ranks |= ranks
        else:
            self.planned_releases[pipeline_id] = PlannedRelease(ranks, False, self.clock())
        return True

    # -- progress -----------------------------------------------------------------------------------

    def report_progress(
        self,
        pipeline_id: str,
        mode: str,
        adapter_id: str | None,
        step_target: int,
        completed: int,
        target_weight_version: int = 0,
        new_batch: bool = False,
    ) -> None:
        """Latest wins per (pipeline, mode, adapter); completed is clamped to [0, step_target].
        ``new_batch`` marks a begin: it re-opens a retired stream; other reports of a retired
        stream are late ones of the previous rollout and are ignored."""
        self._spec(pipeline_id)
        key = self._stream_key(pipeline_id, mode, adapter_id)
        _require_int("step_target", step_target, 1)
        if not isinstance(completed, int) or isinstance(completed, bool):
            raise InvalidRequestError(f"completed must be an int, got {completed!r}")
        retired = self.retired_streams.get(pipeline_id)
        if retired and key in retired:
            if not new_batch:
                return
            retired.discard(key)
        self.progress.setdefault(pipeline_id, {})[key] = StreamProgress(
            mode=mode,
            adapter_id=adapter_id,
            step_target=step_target,
            completed=min(max(completed, 0), step_target),
            target_weight_version=target_weight_version,
        )

    def clear_progress(self, pipeline_id: str, mode: str | None = None, adapter_id: str | None = None) -> bool:
        """Retire one stream (or all with ``mode=None``). Clearing the pipeline's last stream
        retires its open demand. Returns True if the open demand was retired. The end of a
        retired stream (late, from the previous rollout) changes nothing."""
        if mode is not None and (mode, adapter_id) in self.retired_streams.get(pipeline_id, ()):
            return False
        streams = self.progress.get(pipeline_id)
        if streams is None:
            return False
        if mode is None:
            streams.clear()
        else:
            streams.pop((mode, adapter_id), None)
        if streams:
            return False
        del self.progress[pipeline_id]
        return self.open_demand.pop(pipeline_id, None) is not None

    def retire_streams(self, pipeline_id: str) -> None:
        """A rollout is over (the next one signals demand, or the generation cluster is
        released): drop its streams and ignore their late reports until they begin again."""
        streams = self.progress.pop(pipeline_id, None)
        if streams:
            self.retired_streams.setdefault(pipeline_id, set()).update(streams)

    def remaining(self, pipeline_id: str) -> int:
        """Samples the pipeline still has to generate: its progress streams' remaining work, or,
        while its open demand has no stream yet, the registry's step target."""
        streams = self.progress.get(pipeline_id)
        if streams:
            return sum(s.step_target - s.completed for s in streams.values())
        return self.open_demand.get(pipeline_id, 0)

    # -- plan application -------------------------------------------------------------------------

    def apply(self, plan: Any) -> list[PendingRequest]:
        """Commit a validated :class:`~rlix_plugin.scheduler.planner.Plan`. Returns the pending
        requests it satisfied (their waiters may now be signalled)."""
        now = self.clock()
        for pid, ranks in plan.shrinks.items():
            spec, alloc = self.pipelines[pid], self.generation[pid]
            for rank in ranks:
                alloc.active.discard(rank)
                for gpu in spec.bundles[rank]:
                    self.owner[gpu] = None
        satisfied = []
        for grant in plan.grants:
            request = self.pending.pop(grant.cluster_id)
            self.fixed[grant.cluster_id] = FixedAllocation(
                request.pipeline_id, request.cluster, request.priority, grant.gpus, now
            )
            for gpu in grant.gpus:
                self.owner[gpu] = grant.cluster_id
            satisfied.append(request)
        for pid, ranks in plan.expands.items():
            spec, alloc = self.pipelines[pid], self.generation[pid]
            for rank in ranks:
                alloc.active.add(rank)
                for gpu in spec.bundles[rank]:
                    self.owner[gpu] = (pid, rank)
        for pid, release in list(self.planned_releases.items()):
            alloc = self.generation.get(pid)
            if release.drop_cluster and alloc is not None:
                # Workers woken while the release was in flight go with the cluster too.
                release.ranks = set(alloc.active)
            else:
                release.ranks &= alloc.active if alloc is not None else set()
            if not release.ranks:
                del self.planned_releases[pid]
                if release.drop_cluster and alloc is not None and not alloc.active:
                    del self.generation[pid]
        for pid, alloc in self.generation.items():
            request = self.pending.get(cluster_id(pid, ACTOR_INFER))
            if request is not None and alloc.active:
                del self.pending[request.cluster_id]
                satisfied.append(request)
        return satisfied

    # -- reading ------------------------------------------------------------------------------------

    def idle_gpus(self) -> list[int]:
        return [gpu for gpu, owner in enumerate(self.owner) if owner is None]

    def gen_grant(self, pipeline_id: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(GPU ids, DP ranks) of the pipeline's awake generation workers."""
        alloc = self.generation.get(pipeline_id)
        if alloc is None:
            return (), ()
        return self._gen_gpus(self.pipelines[pipeline_id], alloc.active), tuple(sorted(alloc.active))

    def fixed_gpus(self, pipeline_id: str, cluster: str) -> tuple[int, ...]:
        alloc = self.fixed.get(cluster_id(pipeline_id, cluster))
        return alloc.gpus if alloc is not None else ()

    # -- helpers ------------------------------------------------------------------------------------

    def _spec(self, pipeline_id: str, admitted: bool = True) -> PipelineSpec:
        spec = self.pipelines.get(pipeline_id)
        if spec is None:
            raise InvalidRequestError(f"unknown pipeline {pipeline_id!r}; register it first")
        if pipeline_id in self.fenced:
            raise PipelineGoneError(f"pipeline {pipeline_id!r} is fenced: {self.fenced[pipeline_id]}")
        if admitted and pipeline_id not in self.admitted:
            raise InvalidRequestError(f"pipeline {pipeline_id!r} is registered but not admitted")
        return spec

    @staticmethod
    def _cluster(spec: PipelineSpec, cluster: str) -> str:
        if cluster not in spec.clusters:
            raise InvalidRequestError(
                f"pipeline {spec.pipeline_id!r} has no cluster {cluster!r}; registered: {sorted(spec.clusters)}"
            )
        return cluster_id(spec.pipeline_id, cluster)

    def _stream_key(self, pipeline_id: str, mode: str, adapter_id: str | None) -> StreamKey:
        if mode not in PROGRESS_MODES:
            raise InvalidRequestError(f"progress mode must be one of {list(PROGRESS_MODES)}, got {mode!r}")
        if mode == MODE_FULL and adapter_id is not None:
            raise InvalidRequestError(f"mode {MODE_FULL!r} takes no adapter_id, got {adapter_id!r}")
        if mode == MODE_LORA and not adapter_id:
            raise InvalidRequestError(f"mode {MODE_LORA!r} needs an adapter_id, got {adapter_id!r}")
        existing = {m for m, _ in self.progress.get(pipeline_id, {})}
        if existing and mode not in existing:
            raise InvalidRequestError(
                f"pipeline {pipeline_id!r} reports {sorted(existing)} progress; mixing in {mode!r} streams is not allowed"
            )
        return (mode, adapter_id)

    def _free_fixed(self, cid: str) -> None:
        alloc = self.fixed.pop(cid)
        for gpu in alloc.gpus:
            self.owner[gpu] = None

    @staticmethod
    def _gen_gpus(spec: PipelineSpec, ranks: Iterable[int]) -> tuple[int, ...]:
        return tuple(sorted(gpu for rank in ranks for gpu in spec.bundles[rank]))


__all__ = [
    "FixedAllocation",
    "GenerationAllocation",
    "Owner",
    "PendingRequest",
    "PlannedRelease",
    "RequestOutcome",
    "SchedulerState",
]
