"""verl's ``RolloutReplica`` for the transformers CPU server: one server actor per replica.

verl builds one replica per ``rollout TP × DP × PP`` training ranks (hybrid mode: the replica's
"GPUs" are those ranks' logical GPUs). The replica starts a :class:`.server.TransformersCpuServer`
actor on the node of its first rank, named as verl names its servers
(``transformers_cpu_server_<replica>_0``) so that the :mod:`.adapter` in each training rank finds
it, and forwards the control calls verl's checkpoint manager and the rlix integration make.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from verl.workers.rollout.replica import RolloutMode, RolloutReplica

from rlix_plugin.testing.verl_cpu import ROLLOUT_NAME
from rlix_plugin.testing.verl_cpu.server import TransformersCpuServer


def server_name(replica_rank: int, name_suffix: str = "") -> str:
    """The Ray actor name of a replica's server (in the job's namespace)."""
    return f"{ROLLOUT_NAME}_server_{replica_rank}_0{name_suffix}"


class TransformersCpuReplica(RolloutReplica):
    """A rollout replica served by one transformers CPU server (single node)."""

    async def launch_servers(self) -> None:
        if self.rollout_mode != RolloutMode.HYBRID:
            raise NotImplementedError(
                f"the {ROLLOUT_NAME} rollout runs colocated with training (hybrid); got {self.rollout_mode}"
            )
        if len(self.workers) != self.world_size:
            raise ValueError(f"replica {self.replica_rank} has {len(self.workers)} ranks, expected {self.world_size}")
        node_id = await self.workers[0].__ray_call__.remote(lambda worker: ray.get_runtime_context().get_node_id())
        server = (
            ray.remote(TransformersCpuServer)
            .options(
                name=server_name(self.replica_rank, self.name_suffix),
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
                max_concurrency=self.max_concurrency,
                num_cpus=0,
            )
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        await server.launch.remote()
        self.servers = [server]
        self._server_handle = server
        job_id = ray.get_runtime_context().get_job_id()
        # verl's load balancer keys servers by address; these servers speak only Ray.
        self._server_address = f"{ROLLOUT_NAME}://{job_id}/{self.replica_rank}"

    async def sleep(self) -> None:
        # As vLLM's replica: let requests already admitted finish before memory goes.
        await self.servers[0].wait_for_requests_to_drain.remote()
        await asyncio.gather(*[server.sleep.remote() for server in self.servers])

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        results = await asyncio.gather(
            *[server.abort_all_requests.remote(reject_request=reject_request) for server in self.servers]
        )
        return {
            "aborted_count": sum(r.get("aborted_count", 0) for r in results),
            "request_ids": [rid for r in results for rid in r.get("request_ids", [])],
            "server_results": results,
        }

    async def describe(self) -> dict[str, Any]:
        """The server's state (see :meth:`.server.TransformersCpuServer.describe`)."""
        return await self.servers[0].describe.remote()


__all__ = ["TransformersCpuReplica", "server_name"]
