"""What verl's ``verl.plugins`` entry point ``rlix_cpu`` loads: the CPU kit's registrations.

Registers the ``cpu`` platform and the ``transformers_cpu`` rollout (replica class and
``BaseRollout`` adapter) in verl's registries. Registering selects nothing: a job still asks for
them with ``VERL_PLATFORM=cpu`` and ``actor_rollout_ref.rollout.name=transformers_cpu``. verl
swallows entry-point errors at DEBUG level, so a failure is logged here at WARNING and kept in
:data:`load_error`.
"""

from __future__ import annotations

import logging

from rlix_plugin.testing.verl_cpu import ROLLOUT_NAME

log = logging.getLogger(__name__)

#: ``BaseRollout`` class path verl imports for ``rollout.name=transformers_cpu``.
ADAPTER_PATH = "rlix_plugin.testing.verl_cpu.adapter.TransformersCpuAdapter"

#: Why the kit did not load, or ``None`` if it did.
load_error: Exception | None = None


def _replica_class() -> type:
    from rlix_plugin.testing.verl_cpu.replica import TransformersCpuReplica

    return TransformersCpuReplica


def load() -> bool:
    """Register the platform and the rollout; True on success. Idempotent."""
    global load_error
    try:
        from verl.workers.rollout import base as rollout_base
        from verl.workers.rollout.replica import RolloutReplicaRegistry

        import rlix_plugin.testing.verl_cpu.platform  # noqa: F401  (registers on import)

        RolloutReplicaRegistry.register(ROLLOUT_NAME, _replica_class)
        # verl resolves a rollout's BaseRollout class from this table (module state, not a file).
        rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = ADAPTER_PATH
    except Exception as exc:
        load_error = exc
        log.warning(
            "rlix: the verl CPU kit failed to load; rollout %r is unavailable: %r", ROLLOUT_NAME, exc, exc_info=True
        )
        return False
    load_error = None
    return True


load()
