"""Killing the rlix scheduler under a running job, to check that it rides through (Ray backend).

:class:`SchedulerKiller` kills the scheduler actor's process with SIGKILL -- what the kernel's OOM
killer does -- and waits until Ray has restarted it and the new incarnation has reconciled with
every pipeline. It measures each recovery from the scheduler's own clock readings (the kill, the
restore of the saved state, the end of reconciliation), so a poll interval never inflates the
figure. It needs the scheduler on this machine (a local cluster: the test suite, the
benchmarks, a laptop).

Used by ``tests/restart/`` and ``benchmarks/recovery.py``; framework authors can run their own
integration under it the same way.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

#: Longest wait for a restarted scheduler to serve and reconcile.
RECOVERY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Kill:
    """One kill and what followed it.

    ``restored_s``: from the kill to the new incarnation having loaded the saved state;
    ``recovered_s``: to every pipeline reattached (planning resumes); ``answered_s``: to a caller
    that asked right after the kill getting its answer from the new incarnation (what a pipeline
    waits, Ray's detection of the dead process included); ``in_doubt``: DP ranks that were in a
    transition the killed incarnation had started (> 0: killed in the middle of a resize)."""

    epoch: int
    at: float
    restored_s: float
    recovered_s: float
    answered_s: float
    in_doubt: int
    pipelines: tuple[str, ...]


class SchedulerKiller:
    """Kills the scheduler of ``client`` (a :class:`rlix_plugin.ray.RlixClient`) and times its
    recoveries; :attr:`kills` lists them in order."""

    def __init__(self, client: Any, poll_s: float = 0.005) -> None:
        self.client = client
        self.poll_s = poll_s
        self.kills: list[Kill] = []
        self._lock = threading.Lock()

    def kill(self, timeout_s: float = RECOVERY_TIMEOUT_S) -> Kill:
        """Kill the scheduler now and wait until it has recovered."""
        described = self.client.describe()
        at = time.time()
        os.kill(int(described["process_id"]), signal.SIGKILL)
        return self._recovered(described, at, timeout_s)

    def kill_mid_resize(self, timeout_s: float = RECOVERY_TIMEOUT_S, attempts: int = 50) -> Kill:
        """Kill the scheduler while a resize it asked for is running (it watches for one, kills,
        and tries again -- up to ``attempts`` kills -- until the restarted scheduler reports ranks
        whose transition it had to settle with the pipelines)."""
        for _ in range(attempts):
            deadline = time.monotonic() + timeout_s
            while not self.client.snapshot().get("moves_in_flight"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no resize was in flight for {timeout_s:.0f}s")
                time.sleep(self.poll_s / 5)
            described = self.client.describe()
            at = time.time()
            os.kill(int(described["process_id"]), signal.SIGKILL)
            kill = self._recovered(described, at, timeout_s)
            if kill.in_doubt:
                return kill
        raise TimeoutError(f"{attempts} kills, none while a resize was in flight")

    def _recovered(self, described: dict[str, Any], at: float, timeout_s: float) -> Kill:
        deadline = time.monotonic() + timeout_s
        answered: float | None = None
        while True:
            now = self.client.describe()
            if answered is None and now["epoch"] > described["epoch"]:
                answered = time.time()
            if now["epoch"] > described["epoch"] and not now["recovering"] and now["reconciled_at"] is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the scheduler did not recover within {timeout_s:.0f}s of the kill: {now}")
            time.sleep(self.poll_s)
        assert answered is not None
        kill = Kill(
            int(now["epoch"]),
            at,
            max(0.0, now["restarted_at"] - at),
            max(0.0, now["reconciled_at"] - at),
            answered - at,
            int(now["in_doubt_at_restart"]),
            tuple(now["pipelines"]),
        )
        with self._lock:
            self.kills.append(kill)
        return kill


__all__ = ["Kill", "RECOVERY_TIMEOUT_S", "SchedulerKiller"]
