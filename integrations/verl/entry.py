"""What verl's ``verl.plugins`` entry point loads (``import verl`` does, in every process).

Importing this module registers the ``rlix_sync`` trainer mode. verl loads entry points inside
``import verl`` and swallows their errors at DEBUG level, so a failure here is logged at WARNING
by this module, with the reason, and kept in :data:`load_error`; verl then answers
``trainer_mode=rlix_sync`` with its own "Unknown trainer" error.
"""

from __future__ import annotations

import logging

from rlix_plugin.integrations.verl import LOGGER_NAME, TRAINER_MODE

log = logging.getLogger(LOGGER_NAME)

#: Why the integration did not load, or ``None`` if it did.
load_error: Exception | None = None


def load() -> bool:
    """Import the trainer module (which registers the mode); True on success. Idempotent."""
    global load_error
    try:
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
