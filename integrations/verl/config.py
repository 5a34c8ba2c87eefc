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


def _rollout_dp(rollout: Any) -> int:
    """Engines per replica: ``rollout.data_parallel_size`` (absent or null: 1, as verl's default)."""
    return int(_get(rollout, "data_parallel_size", 1) or 1)


def replica_world_size(config: Any) -> int:
    """GPUs per rollout replica: verl sizes a replica as TP × DP × PP of the rollout config."""
    rollout = config.actor_rollout_ref.rollout
    return (
        int(rollout.tensor_model_parallel_size)
        * _rollout_dp(rollout)
        * int(_get(rollout, "pipeline_model_parallel_size", 1) or 1)
    )


#: verl 0.9.1's ``RolloutConfig.max_num_seqs``: what a rollout config without the key gets (the
#: shipped ``rollout.yaml`` sets 256, so only a hand-built config falls back to this).
VERL_DEFAULT_MAX_NUM_SEQS = 1024

#: The engine's own name for its batch under ``rollout.engine_kwargs.<name>``: verl passes those
#: keyword arguments after its own, so one given there replaces ``max_num_seqs``.
ENGINE_BATCH_KEYS = {"vllm": "max_num_seqs", "sglang": "max_running_requests", "trtllm": "max_batch_size"}


def _engine_batch(rollout: Any) -> tuple[str, Any]:
    """The key that sets one engine's batch, and its raw value: the engine's own keyword in
    ``engine_kwargs`` when the job set one, else ``rollout.max_num_seqs`` (absent: verl's default)."""
    # The shipped config leaves the name as the ``???`` placeholder (every job sets it), which a
    # DictConfig raises on when read; ``in`` is False for it, as for an absent key.
    name = str(_get(rollout, "name", "") or "") if "name" in rollout else ""
    engine_key = ENGINE_BATCH_KEYS.get(name)
    if engine_key is not None:
        value = _get(_get(_get(rollout, "engine_kwargs"), name), engine_key)
        if value is not None:
            return f"actor_rollout_ref.rollout.engine_kwargs.{name}.{engine_key}", value
    key = "actor_rollout_ref.rollout.max_num_seqs"
    return key, _get(rollout, "max_num_seqs", VERL_DEFAULT_MAX_NUM_SEQS)


def samples_per_engine(config: Any) -> int:
    """Samples one scheduler bundle (one rollout replica, ``actor_infer`` DP rank) runs at once,
    declared as :attr:`~rlix_plugin.hookspecs.PipelineLimits.samples_per_engine`.

    verl hands ``rollout.max_num_seqs`` to each server as its batch (vLLM's ``max_num_seqs``,
    SGLang's ``max_running_requests``, TensorRT-LLM's ``max_batch_size``), and a replica with
    ``data_parallel_size`` d runs d engines, so one bundle runs ``max_num_seqs × d`` samples (the
    unit of every progress hook) at once. A batch keyword the job set for its engine under
    ``rollout.engine_kwargs.<name>`` replaces ``max_num_seqs``, as it does in verl.

    :raises InvalidRequestError: the batch is not an int >= 1 (``null`` included: verl 0.9.1 adds
        to it when it launches every rollout server, and fails there); the message names the key.
    """
    rollout = config.actor_rollout_ref.rollout
    key, value = _engine_batch(rollout)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{key} must be an int >= 1 (samples one rollout engine runs at once), got {value!r}")
    return value * _rollout_dp(rollout)


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
    "ENGINE_BATCH_KEYS",
    "KNOWN_KEYS",
    "RlixVerlConfig",
    "VERL_DEFAULT_MAX_NUM_SEQS",
    "check_sleep_frees_memory",
    "cluster_specs",
    "replica_world_size",
    "rollout_group_size",
    "samples_per_engine",
    "samples_per_step",
]
