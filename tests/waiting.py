"""Waiting on a condition in tests: poll a cheap predicate with a timeout, never sleep-and-hope."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.005) -> Any:
    """Poll ``predicate`` until it returns something truthy (and return that); fail naming
    ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def project_threads() -> set[threading.Thread]:
    """The project's threads running now (they are named ``rlix-*``)."""
    return {t for t in threading.enumerate() if t.name.startswith("rlix-")}


def wait_until_ended(threads: Iterable[threading.Thread], timeout_s: float, what: str) -> None:
    """Wait until every thread of ``threads`` has ended; fail naming ``what`` and the threads
    still running after ``timeout_s`` seconds."""
    threads = list(threads)
    deadline = time.monotonic() + timeout_s
    while alive := sorted(t.name for t in threads if t.is_alive()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; still running: {alive}")
        time.sleep(0.005)
