"""The one marker pair of the ``rlix`` hook project.

``hookspec`` marks a contract in this package; ``hookimpl`` marks an implementation in a plugin.
Both only attach options to a function: the plugin manager finds them by that attribute.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "rlix"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]
