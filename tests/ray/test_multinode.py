"""Multi-node topology on a two-node ``ray.cluster_utils.Cluster`` (4 logical GPUs each): global
GPU ids with ``gpus_per_node``, TP groups never crossing a node, the scheduler on the head node,
and a pipeline on the other node served across nodes."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from rlix_plugin import connect  # noqa: E402
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, InvalidRequestError  # noqa: E402
from rlix_plugin.ray.names import pipeline_namespace  # noqa: E402

from .support import EngineStandIn, PipelineActor, hooks_for, named_actors  # noqa: E402

NODE = {"num_cpus": 1, "num_gpus": 4, "object_store_memory": 80 * 1024 * 1024}


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    worker = cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    head_id = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
    yield {"head": head_id, "worker": worker.node_id}
    ray.shutdown()
    cluster.shutdown()


def test_two_nodes_pool_pinning_and_node_local_tp_groups(two_nodes):
    client = connect(operator="multinode-operator")  # pool detected from the cluster
    info = client.describe()
    assert (info["num_gpus"], info["gpus_per_node"]) == (8, 4)
    assert info["node_id"] == two_nodes["head"], "the scheduler runs on the head node"

    # A TP group across the node boundary (GPU 3 on node 0, GPU 4 on node 1) is refused up front.
    hooks = hooks_for(EngineStandIn("x"))
    with pytest.raises(InvalidRequestError, match="crosses a node boundary"):
        hooks.register_pipeline(pipeline_id="x", clusters={ACTOR_INFER: ClusterSpec(tp_size=2, gpus=(3, 4))})
    assert named_actors(pipeline_namespace("x")) == [] and client.describe()["pipelines"] == []

    # A pipeline on the second node, TP 2 over all 8 GPUs, training on node 1's GPUs.
    clusters = {
        ACTOR_TRAIN: ClusterSpec(tp_size=4, gpus=(4, 5, 6, 7)),
        ACTOR_INFER: ClusterSpec(tp_size=2, gpus=tuple(range(8))),
    }
    on_worker = NodeAffinitySchedulingStrategy(node_id=two_nodes["worker"], soft=False)
    actor = PipelineActor.options(
        scheduling_strategy=on_worker, namespace=pipeline_namespace("m1"), name="pipeline"
    ).remote("m1", clusters, {})
    report = ray.get(actor.run.remote(2, 64), timeout=120)
    assert report["rollouts"] == 2
    assert report["grants"][0] == [0, 1, 2, 3], "all four TP-2 workers woken for the first rollout"
    assert report["train_gpus"] == [[4, 5, 6, 7]] * 2
    # Training on node 1 preempted exactly the workers there (DP ranks 2, 3); the second rollout
    # started with the node-0 workers still awake.
    assert report["grants"][1] == [0, 1]
    assert client.snapshot()["idle_gpus"] == list(range(8))
    ray.kill(actor)
    client.shutdown("multinode-operator")
