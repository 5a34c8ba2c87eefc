"""What verl's ``verl.plugins`` entry point loads (``import verl`` does, in every process).

Importing this module gives each Ray job its own TransferQueue (:mod:`.transfer_queue`) and
registers the ``rlix_sync`` trainer mode. verl loads entry points inside
``import verl`` and swallows their errors at DEBUG level, so a failure here is logged at WARNING
by this module, with the reason, and kept in :data:`load_error`; verl then answers
``trainer_mode=rlix_sync`` with its own "Unknown trainer" error.
"""

from __future__ import annotations

import logging
import os

from rlix_plugin.integrations.verl import LOGGER_NAME, TRAINER_MODE

log = logging.getLogger(LOGGER_NAME)

#: Why the integration did not load, or ``None`` if it did.
load_error: Exception | None = None


def _cpu_platform_first() -> None:
    """Register the CPU kit's platform before the trainer import makes verl pick one.

    verl resolves its platform once per process, on first use, and importing the trainer
    module is such a use. verl loads this entry point before ``rlix_cpu``; a job that asks for
    the CPU platform (``VERL_PLATFORM=cpu``) needs it registered by then.
    """
    from rlix_plugin.testing.verl_cpu import PLATFORM_NAME

    if os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME:
        import rlix_plugin.testing.verl_cpu.entry  # noqa: F401  (registers on import)


def load() -> bool:
    """Import the trainer module (which registers the mode); True on success. Idempotent."""
    global load_error
    try:
        _cpu_platform_first()
        from rlix_plugin.integrations.verl import transfer_queue

        transfer_queue.install()
        import rlix_plugin.integrations.verl.trainer  # noqa: F401  (registers on import)
    except Exception as exc:
        load_error = exc
        log.warning(
            "rlix: the verl integration failed to load; trainer mode %r is unavailable: %r",
            TRAINER_MODE, exc, exc_info=True,
        )
        return False
    load_error = None
    return True


load()
