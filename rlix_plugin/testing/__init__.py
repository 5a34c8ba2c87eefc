"""Test kit for framework authors: a call recorder and pytest fixtures.

The fixtures are in :mod:`rlix_plugin.testing.pytest_plugin`, loaded by pytest through the
``pytest11`` entry point once rlix-plugin is installed.
"""

from rlix_plugin.testing.recorder import HookCall, HookRecorder

__all__ = ["HookCall", "HookRecorder"]
