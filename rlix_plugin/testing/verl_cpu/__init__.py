"""Run real verl training loops on a machine without a GPU: for framework tests and CI.

verl 0.9.1 cannot train on a CPU machine as shipped (no CPU platform, NCCL-only process groups,
FSDP engines registered for GPUs only, and only GPU inference servers; ``reference/verl-cpu.md``).
This kit supplies what is missing, without changing verl's files, and a job opts in by
configuration:

* ``VERL_PLATFORM=cpu`` in the job's environment selects :class:`.platform.PlatformCPU`
  (tensors on the CPU, gloo collectives, logical Ray ``GPU`` resources);
* ``actor_rollout_ref.rollout.name=transformers_cpu`` selects a rollout server on transformers
  (:mod:`.server`, :mod:`.replica`, :mod:`.adapter`) that keeps vLLM's server semantics: sleep
  drops weights and KV cache, only a weight update makes weights valid again, an abort closes a
  submission gate and returns partial tokens, ``resume_generation`` reopens it;
* :func:`cpu_overrides` lists the other command-line settings a CPU run needs.

Both names are registered when verl loads its ``verl.plugins`` entry points (entry point
``rlix_cpu`` -> :mod:`.entry`); registering selects nothing. :mod:`.assets` builds a tiny random
model, its tokenizer and a parquet dataset, so a test needs no download.

Importing this package imports neither verl nor torch (installed with ``rlix-plugin[verl]``).
"""

from __future__ import annotations

#: ``VERL_PLATFORM`` value of the CPU platform.
PLATFORM_NAME = "cpu"
#: ``actor_rollout_ref.rollout.name`` of the transformers rollout server.
ROLLOUT_NAME = "transformers_cpu"
#: Key under ``actor_rollout_ref.rollout.engine_kwargs`` for the server's own options.
ENGINE_KWARGS_KEY = ROLLOUT_NAME


def cpu_overrides(*, token_delay_s: float | None = None) -> list[str]:
    """Hydra overrides of ``verl.trainer.main_ppo`` for a job on the CPU kit.

    Run the job with ``VERL_PLATFORM=cpu`` in the environment of every process (the driver's,
    and the ``ray start`` of a shared cluster). Ray resources are not set here: a job that starts
    its own Ray adds ``+ray_kwargs.ray_init.num_cpus=... +ray_kwargs.ray_init.num_gpus=...``.

    :param token_delay_s: Seconds the rollout server waits per generated token (default 0), so a
        tiny model's rollout lasts long enough to be preempted.
    """
    overrides = [
        f"actor_rollout_ref.rollout.name={ROLLOUT_NAME}",
        "trainer.device=cpu",
        # FSDP1 broadcasts module states from GPU memory at wrap time; FSDP2 runs on CPU tensors.
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.fsdp_config.strategy=fsdp2",
        "actor_rollout_ref.ref.strategy=fsdp2",
        # flash-attention kernels need a GPU; padding removal needs them too.
        "+actor_rollout_ref.model.override_config.attn_implementation=eager",
        "actor_rollout_ref.model.use_remove_padding=false",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
        # Every worker is a process that imports verl (seconds of CPU each); one per pool.
        "data.dataloader_num_workers=0",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "reward.num_workers=1",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    ]
    if token_delay_s is not None:
        if not token_delay_s >= 0:
            raise ValueError(f"token_delay_s must be >= 0, got {token_delay_s!r}")
        overrides.append(f"+actor_rollout_ref.rollout.engine_kwargs.{ENGINE_KWARGS_KEY}.token_delay_s={token_delay_s}")
    return overrides


__all__ = ["ENGINE_KWARGS_KEY", "PLATFORM_NAME", "ROLLOUT_NAME", "cpu_overrides"]
