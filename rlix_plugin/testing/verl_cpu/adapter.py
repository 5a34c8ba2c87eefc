"""verl's ``BaseRollout`` for the transformers CPU server, living in each training rank.

verl's hybrid weight sync (``update_weights(mode="naive")`` on every training rank) calls, in
each rank, ``rollout.resume(["weights"])``, then ``rollout.update_weights(generator)``, then
``rollout.resume(["kv_cache"])``; sleeping calls ``rollout.release()``. As in vLLM's
``ServerAdapter``, only the first rank of a replica talks to its server; every rank iterates the
weight generator to the end, because producing each full tensor is a collective over all
training ranks (FSDP all-gathers it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout

from rlix_plugin.testing.verl_cpu.replica import server_name

log = logging.getLogger(__name__)


class TransformersCpuAdapter(BaseRollout):
    """Client of one replica's :class:`~.server.TransformersCpuServer` in a training rank."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ["RANK"])
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % world
        self._has_server = self.rollout_rank == 0
        self._server: Any = None

    @property
    def is_leader_rank(self) -> bool:
        return self._has_server

    def _handle(self) -> Any:
        # Looked up on first use: verl launches the servers after building the training ranks.
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        if self.config.free_cache_engine and self._has_server:
            await self._handle().wake_up.remote(tags=tags)

    async def release(self) -> None:
        if self.config.free_cache_engine and self._has_server:
            await self._handle().sleep.remote()

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Iterable[tuple[str, torch.Tensor]],
        global_steps: int | None = None,
        wire_format: str = "named_tensors",
        **kwargs: Any,
    ) -> None:
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the transformers CPU rollout takes named tensors, not {wire_format!r}")
        tensors: dict[str, torch.Tensor] = {}
        for name, tensor in weights:  # every rank: the generator's all-gathers are collective
            if self._has_server:
                tensors[name] = tensor.detach().to("cpu", copy=True)
        if self._has_server:
            await self._handle().update_weights.remote(tensors, global_steps)

    async def release_kv_cache(self) -> None:
        if self._has_server:
            await self._handle().release_kv_cache.remote()

    async def resume_kv_cache(self) -> None:
        if self._has_server:
            await self._handle().resume_kv_cache.remote()

    def generate_sequences(self, prompts: Any) -> Any:
        raise NotImplementedError("the transformers CPU rollout serves through its server actor, not in-process")


__all__ = ["TransformersCpuAdapter"]
