"""Registration validation: every bad topology is refused with a message naming the value."""

from __future__ import annotations

import pytest

from rlix_plugin.hookspecs import ClusterSpec, InvalidRequestError
from rlix_plugin.scheduler.topology import PoolTopology, validate_pipeline

POOL = PoolTopology(8, 4)


def test_bundles_and_rank_map_are_precomputed():
    spec = validate_pipeline(
        POOL, "p1", {"actor_infer": ClusterSpec(2, (4, 5, 6, 7)), "actor_train": ClusterSpec(1, (0,))}
    )
    assert spec.bundles == ((4, 5), (6, 7))
    assert spec.rank_of_gpu == {4: 0, 5: 0, 6: 1, 7: 1}
    assert spec.tp == 2 and spec.dp_size == 2


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        ({"actor_train": ClusterSpec(1, (0,))}, "'actor_infer' is required"),
        ({"actor_infer": ClusterSpec(1, (0, 8))}, "GPU id 8 is out of range 0..7"),
        ({"actor_infer": ClusterSpec(1, (0, -1))}, "GPU id -1 is out of range"),
        ({"actor_infer": ClusterSpec(1, (1, 1))}, r"duplicate GPU ids \[1\]"),
        ({"actor_infer": ClusterSpec(2, (0, 2))}, r"TP group \[0, 2\] is not contiguous"),
        ({"actor_infer": ClusterSpec(2, (3, 4))}, r"TP group \[3, 4\] crosses a node boundary"),
        ({"actor_infer": ClusterSpec(2, (0, 1, 2))}, "do not split into TP groups of 2"),
        ({"actor_infer": ClusterSpec(0, (0,))}, "tp_size must be a positive int, got 0"),
        ({"actor_infer": ClusterSpec(1, ())}, "no GPUs given"),
        (
            {"actor_infer": ClusterSpec(1, (0,)), "critics": ClusterSpec(1, (1,))},
            r"unknown cluster name\(s\) \['critics'\]",
        ),
        ({"actor_infer": (1, (0,))}, "expected a ClusterSpec"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_topology_is_refused(clusters, message):
    with pytest.raises(InvalidRequestError, match=message):
        validate_pipeline(POOL, "p1", clusters)


@pytest.mark.parametrize("pipeline_id", ["", "has space", "-lead", 7, "x" * 129])
def test_bad_pipeline_id(pipeline_id):
    with pytest.raises(InvalidRequestError, match="pipeline id"):
        validate_pipeline(POOL, pipeline_id, {"actor_infer": ClusterSpec(1, (0,))})


def test_bad_pool():
    with pytest.raises(InvalidRequestError, match="num_gpus must be a positive int, got 0"):
        PoolTopology(0, 8)
    with pytest.raises(InvalidRequestError, match="gpus_per_node"):
        PoolTopology(8, -1)
