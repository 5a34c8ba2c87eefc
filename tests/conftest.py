"""Suite-wide settings: never autoload installed rlix plugins into the project's own tests, and
every test module stops the project's threads it started."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .waiting import project_threads, wait_until_ended

os.environ["RLIX_DISABLE_PLUGIN_AUTOLOAD"] = "1"
for _name in ("RLIX_BACKEND", "RLIX_BLOCK_PLUGINS", "RLIX_STRICT_PLUGINS", "RLIX_TRACE_HOOKS"):
    os.environ.pop(_name, None)

pytest_plugins = ["pytester"]

#: How long a module's threads get to end after its last test (a closed backend's threads end
#: within a delivery or a resize; a live one never does).
THREADS_END_WITHIN_S = 10.0


@pytest.fixture(autouse=True, scope="module")
def _module_stops_its_threads() -> Iterator[None]:
    """Fail the module that leaves a thread of the project (``rlix-*``) running: a backend or
    scheduler a test opened and never closed. Threads left at exit are what the interpreter's
    teardown trips on, and a product that needs them closed must be closed in its own tests."""
    before = project_threads()
    yield
    wait_until_ended(project_threads() - before, THREADS_END_WITHIN_S, "the module's threads of the project to end")


@pytest.fixture
def own_process_wide_scheduler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The local backend's process-wide scheduler, made afresh in the test on first use and closed
    after it (in a program it lives until exit)."""
    from rlix_plugin.backends import local

    monkeypatch.setattr(local, "_default", None)
    yield
    if local._default is not None:
        local._default.close()
