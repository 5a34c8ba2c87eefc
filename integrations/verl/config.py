"""The ``trainer.rlix`` config block of a verl job, read once into plain data.

verl's Hydra config is in struct mode and has no ``rlix`` block, so every key is added with a
``+`` on the command line (``+trainer.rlix.enable=true``). A job that adds nothing gets
:attr:`RlixVerlConfig.enable` ``False``: the integration then calls no ``rlix_`` hook and the
trainer behaves exactly as verl's ``sync`` trainer.

This module reads values with ``.get`` on mappings only, so it works on an OmegaConf
``DictConfig`` and on plain dicts alike, and imports neither verl nor OmegaConf.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rlix_plugin.frontend import DEFAULT_TIMEOUT_S
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, InvalidRequestError

#: The keys of ``trainer.rlix`` this integration reads; anything else is rejected, so a typo
#: (``+trainer.rlix.enabled=true``) fails loudly instead of leaving the job unscheduled.
KNOWN_KEYS = frozenset({"enable", "backend", "address", "timeout_s", "pipeline_id", "gpus"})

_PIPELINE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


def _get(node: Any, key: str, default: Any = None) -> Any:
    if node is None:
        return default
    getter = getattr(node, "get", None)
    return getter(key, default) if getter is not None else default


def _as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
        return value.strip().lower() in {"true", "1", "yes", "on"}
    raise InvalidRequestError(f"trainer.rlix.{key} must be true or false, got {value!r}")


@dataclass(frozen=True)
class RlixVerlConfig:
    """What ``trainer.rlix`` asks for.

    ``enable``      call the rlix hooks at all (default ``False``).
    ``backend``     ``noop``, ``local`` or ``ray``; passed unchanged to
                    :func:`rlix_plugin.get_plugin_manager` (``None``: ``$RLIX_BACKEND``, else noop).
    ``address``     where the backend's scheduler lives (the ``ray`` backend's Ray address);
                    ``None`` lets the backend decide.
    ``timeout_s``   longest wait of a blocking hook (demand, GPU requests), seconds.
    ``pipeline_id`` this job's name on the scheduler (default: ``trainer.experiment_name``);
                    two jobs sharing a scheduler need different ids.
    ``gpus``        global GPU ids of this job in the shared pool (default ``0 .. nnodes *
                    n_gpus_per_node - 1``). Two jobs that share GPUs list the same ids.
    """

    enable: bool = False
    backend: str | None = None
    address: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    pipeline_id: str = "verl"
    gpus: tuple[int, ...] = ()

    @classmethod
    def from_verl(cls, config: Any) -> RlixVerlConfig:
        """Read ``config.trainer.rlix`` of a verl job config (absent block: disabled).

        :raises InvalidRequestError: an unknown key, or a value of the wrong type or range; the
            message names the key.
        """
        trainer = _get(config, "trainer")
        block = _get(trainer, "rlix")
        if block is None:
            return cls(pipeline_id=str(_get(trainer, "experiment_name", "verl") or "verl"))
        if not isinstance(block, Mapping) and not hasattr(block, "keys"):
            raise InvalidRequestError(f"trainer.rlix must be a mapping of keys, got {block!r}")
        unknown = sorted(set(block.keys()) - KNOWN_KEYS)
        if unknown:
            raise InvalidRequestError(
                f"unknown key(s) under trainer.rlix: {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_KEYS))}"
            )

        enable = _as_bool(_get(block, "enable", False), "enable")
        backend = _get(block, "backend")
        backend = str(backend).strip() if backend not in (None, "") else None
        address = _get(block, "address")
        address = str(address).strip() if address not in (None, "") else None

        raw_timeout = _get(block, "timeout_s", DEFAULT_TIMEOUT_S)
        try:
            timeout_s = float(raw_timeout)
        except (TypeError, ValueError):
            raise InvalidRequestError(f"trainer.rlix.timeout_s must be a number, got {raw_timeout!r}") from None
        if not timeout_s > 0:
            raise InvalidRequestError(f"trainer.rlix.timeout_s must be > 0, got {raw_timeout!r}")

        pipeline_id = _get(block, "pipeline_id") or _get(trainer, "experiment_name", "verl") or "verl"
        pipeline_id = str(pipeline_id)
        if not _PIPELINE_ID.match(pipeline_id):
            raise InvalidRequestError(
                f"trainer.rlix.pipeline_id {pipeline_id!r} may hold only letters, digits and -_. "
                "(set +trainer.rlix.pipeline_id=... when trainer.experiment_name has other characters)"
            )

        raw_gpus = _get(block, "gpus")
        gpus: tuple[int, ...] = ()
        if raw_gpus is not None:
            if isinstance(raw_gpus, (str, bytes, Mapping)) or not isinstance(raw_gpus, Iterable):
                raise InvalidRequestError(f"trainer.rlix.gpus must be a list of GPU ids, got {raw_gpus!r}")
            try:
                gpus = tuple(int(g) for g in raw_gpus)
            except (TypeError, ValueError):
                raise InvalidRequestError(f"trainer.rlix.gpus must be a list of GPU ids, got {raw_gpus!r}") from None
            if len(set(gpus)) != len(gpus) or any(g < 0 for g in gpus):
                raise InvalidRequestError(f"trainer.rlix.gpus must be distinct ids >= 0, got {list(gpus)}")

        return cls(
            enable=enable,
            backend=backend,
            address=address,
            timeout_s=timeout_s,
            pipeline_id=pipeline_id,
            gpus=gpus,
        )

    def backend_options(self) -> dict[str, Any] | None:
        """Keyword arguments for the backend's factory: the address, when one was given.

        :raises InvalidRequestError: an address with a backend that has no use for one.
        """
        if self.address is None:
            return None
        if (self.backend or "").lower() in {"noop", "local"}:
            raise InvalidRequestError(
                f"trainer.rlix.address is for a remote scheduler; backend {self.backend!r} runs in this process"
            )
        return {"address": self.address}


def samples_per_step(config: Any) -> int:
    """Samples one sync step must collect: ``data.train_batch_size`` prompts × ``rollout.n``.

    This is the unit of every progress hook (samples, never prompt groups).
    """
    prompts = int(config.data.train_batch_size)
    n = int(config.actor_rollout_ref.rollout.n)
    return prompts * n


def rollout_group_size(config: Any) -> int:
    """Samples per prompt group (``actor_rollout_ref.rollout.n``)."""
    return int(config.actor_rollout_ref.rollout.n)


def replica_world_size(config: Any) -> int:
    """GPUs per rollout replica: verl sizes a replica as TP × DP × PP of the rollout config."""
    rollout = config.actor_rollout_ref.rollout
    return (
        int(rollout.tensor_model_parallel_size)
        * int(_get(rollout, "data_parallel_size", 1) or 1)
        * int(_get(rollout, "pipeline_model_parallel_size", 1) or 1)
    )


def check_sleep_frees_memory(config: Any) -> None:
    """Refuse a rollout whose sleep would keep its GPU memory.

    verl's servers free weights and KV cache on ``sleep()`` only when
    ``actor_rollout_ref.rollout.free_cache_engine`` is true (vLLM's returns at once otherwise,
    ``vllm_async_server.py:854``): an engine the scheduler put to sleep would keep its memory on a
    GPU that another job is then given.

    :raises InvalidRequestError: ``free_cache_engine`` is false.
    """
    value = _get(config.actor_rollout_ref.rollout, "free_cache_engine", True)
    if not _as_bool(value, "free_cache_engine"):
        raise InvalidRequestError(
            f"actor_rollout_ref.rollout.free_cache_engine={value!r}: with rlix the engines must free their "
            "GPU memory when put to sleep, or a GPU given to another job stays full; set it to true"
        )


def cluster_specs(config: Any, rlix: RlixVerlConfig) -> dict[str, ClusterSpec]:
    """The clusters a verl sync job registers.

    verl's sync trainer colocates training and rollout on one pool, so both clusters map onto
    the same GPUs: ``actor_train`` one GPU per training rank, ``actor_infer`` one DP bundle per
    rollout replica (replica ``i`` is DP rank ``i``).

    :raises InvalidRequestError: ``gpus`` of the wrong length, or a pool that does not divide
        into whole replicas.
    """
    trainer = config.trainer
    pool_size = int(trainer.nnodes) * int(trainer.n_gpus_per_node)
    gpus = rlix.gpus or tuple(range(pool_size))
    if len(gpus) != pool_size:
        raise InvalidRequestError(
            f"trainer.rlix.gpus lists {len(gpus)} GPUs but the job uses trainer.nnodes × "
            f"trainer.n_gpus_per_node = {pool_size}"
        )
    tp = replica_world_size(config)
    if tp <= 0 or pool_size % tp:
        raise InvalidRequestError(
            f"{pool_size} GPUs do not split into rollout replicas of {tp} GPUs (rollout TP × DP × PP)"
        )
    return {ACTOR_TRAIN: ClusterSpec(1, gpus), ACTOR_INFER: ClusterSpec(tp, gpus)}


__all__ = [
    "KNOWN_KEYS",
    "RlixVerlConfig",
    "check_sleep_frees_memory",
    "cluster_specs",
    "replica_world_size",
    "rollout_group_size",
    "samples_per_step",
]
