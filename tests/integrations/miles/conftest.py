"""Fixtures of the miles integration's tests."""

from __future__ import annotations

import pytest

from . import miles_fork


@pytest.fixture(scope="session")
def miles():
    """The pinned miles modules (:func:`.miles_fork.load`); the test skips when they are absent."""
    return miles_fork.load()
