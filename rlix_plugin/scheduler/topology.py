"""The GPU pool and a pipeline's clusters on it; validation of what a pipeline registers.

Pure: no I/O. Everything here is computed once, at registration, so that planning can work with
precomputed bundles and ``gpu -> dp rank`` maps instead of rescanning device lists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from rlix_plugin.hookspecs import ACTOR_INFER, CLUSTER_NAMES, ClusterSpec, InvalidRequestError

_PIPELINE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class PoolTopology:
    """``num_gpus`` GPUs with global ids ``0..num_gpus-1``; node ``k`` holds
    ``k*gpus_per_node .. (k+1)*gpus_per_node-1``."""

    num_gpus: int
    gpus_per_node: int

    def __post_init__(self) -> None:
        if not isinstance(self.num_gpus, int) or self.num_gpus <= 0:
            raise InvalidRequestError(f"num_gpus must be a positive int, got {self.num_gpus!r}")
        if not isinstance(self.gpus_per_node, int) or self.gpus_per_node <= 0:
            raise InvalidRequestError(f"gpus_per_node must be a positive int, got {self.gpus_per_node!r}")

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_node


def cluster_id(pipeline_id: str, cluster: str) -> str:
    """``{pipeline_id}_{cluster}``: the name a cluster has on the scheduler."""
    return f"{pipeline_id}_{cluster}"


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline: its clusters, and its generation bundles precomputed."""

    pipeline_id: str
    clusters: Mapping[str, ClusterSpec]
    #: Generation DP rank -> GPU ids of its bundle.
    bundles: tuple[tuple[int, ...], ...] = field(repr=False)
    #: GPU id -> generation DP rank whose bundle holds it.
    rank_of_gpu: Mapping[int, int] = field(repr=False)

    @property
    def infer(self) -> ClusterSpec:
        return self.clusters[ACTOR_INFER]

    @property
    def tp(self) -> int:
        return self.infer.tp_size

    @property
    def dp_size(self) -> int:
        return len(self.bundles)


def _check_cluster(pool: PoolTopology, pipeline_id: str, name: str, spec: object) -> ClusterSpec:
    where = f"pipeline {pipeline_id!r} cluster {name!r}"
    if not isinstance(spec, ClusterSpec):
        raise InvalidRequestError(f"{where}: expected a ClusterSpec, got {spec!r}")
    tp, gpus = spec.tp_size, tuple(spec.gpus)
    if not isinstance(tp, int) or isinstance(tp, bool) or tp <= 0:
        raise InvalidRequestError(f"{where}: tp_size must be a positive int, got {tp!r}")
    if not gpus:
        raise InvalidRequestError(f"{where}: no GPUs given")
    for gpu in gpus:
        if not isinstance(gpu, int) or isinstance(gpu, bool) or not 0 <= gpu < pool.num_gpus:
            raise InvalidRequestError(f"{where}: GPU id {gpu!r} is out of range 0..{pool.num_gpus - 1}")
    duplicates = sorted({g for g in gpus if gpus.count(g) > 1}) if len(set(gpus)) != len(gpus) else []
    if duplicates:
        raise InvalidRequestError(f"{where}: duplicate GPU ids {duplicates}")
    if len(gpus) % tp:
        raise InvalidRequestError(f"{where}: {len(gpus)} GPUs do not split into TP groups of {tp}")
    for start in range(0, len(gpus), tp):
        group = gpus[start : start + tp]
        if list(group) != list(range(group[0], group[0] + tp)):
            raise InvalidRequestError(f"{where}: TP group {list(group)} is not contiguous")
        if pool.node_of(group[0]) != pool.node_of(group[-1]):
            raise InvalidRequestError(
                f"{where}: TP group {list(group)} crosses a node boundary ({pool.gpus_per_node} GPUs per node)"
            )
    return ClusterSpec(tp_size=tp, gpus=gpus)


def validate_pipeline(pool: PoolTopology, pipeline_id: object, clusters: object) -> PipelineSpec:
    """Check a registration and precompute its bundles.

    :raises InvalidRequestError: naming the pipeline, the cluster and the bad value.
    """
    if not isinstance(pipeline_id, str) or not _PIPELINE_ID.match(pipeline_id):
        raise InvalidRequestError(
            f"pipeline id {pipeline_id!r} must be 1-128 letters, digits or '_.-', starting with a letter or digit"
        )
    if not isinstance(clusters, Mapping) or not clusters:
        raise InvalidRequestError(f"pipeline {pipeline_id!r}: clusters must be a non-empty mapping, got {clusters!r}")
    unknown = sorted(set(clusters) - set(CLUSTER_NAMES))
    if unknown:
        raise InvalidRequestError(
            f"pipeline {pipeline_id!r}: unknown cluster name(s) {unknown}; known: {list(CLUSTER_NAMES)}"
        )
    if ACTOR_INFER not in clusters:
        raise InvalidRequestError(f"pipeline {pipeline_id!r}: the generation cluster {ACTOR_INFER!r} is required")
    checked = {name: _check_cluster(pool, pipeline_id, name, spec) for name, spec in clusters.items()}
    infer = checked[ACTOR_INFER]
    bundles = tuple(infer.bundle(rank) for rank in range(infer.dp_size))
    rank_of_gpu = {gpu: rank for rank, bundle in enumerate(bundles) for gpu in bundle}
    return PipelineSpec(pipeline_id=pipeline_id, clusters=checked, bundles=bundles, rank_of_gpu=rank_of_gpu)


__all__ = ["PipelineSpec", "PoolTopology", "cluster_id", "validate_pipeline"]
