"""What the scheduler tells its observers: the extension point of the decision log and the metrics.

A :class:`SchedulerObserver` is given to :meth:`SchedulerService.add_observer
<rlix_plugin.scheduler.service.SchedulerService.add_observer>`. The service calls it synchronously
on its event loop, right after the change it reports and before anyone waiting on that change is
answered, so an observer reads the state exactly as the change left it. Therefore an observer must
not block, must not change the state, and should not raise: an exception is logged and ignored (a
broken observer never breaks scheduling).

:class:`ObserverBase` implements every call as a no-op, for observers that need only some.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .plan import Plan
    from .state import Event, ResizeAction, ResizeOutcome


class SchedulerObserver(Protocol):
    """Receives every committed change of one scheduler (see the module docstring)."""

    def changed(self, event: str, pipeline_id: str | None) -> None:
        """After every change of requests, releases, progress or registrations; ``event`` is the
        service's name for it (``register``, ``request``, ``release``, ``progress``, ``demand
        retired``, ``fence``, ``commit``, ``unregister``)."""

    def planned(self, plan: Plan | None, seconds: float) -> None:
        """After a planning pass: the plan whose moves just started (``None``: the pass decided
        nothing), and how long the pass took (planning, validating, starting its moves)."""

    def answered(self, events: Sequence[Event]) -> None:
        """Before the waiters of ``events`` (requests satisfied, pipelines fenced, releases done)
        are answered."""

    def resized(self, action: ResizeAction, outcome: ResizeOutcome) -> None:
        """After the state took one resize call's outcome (a wake or a sleep confirmed, or a
        failure that fenced the pipeline)."""

    def removing(self, pipeline_id: str, reason: str) -> None:
        """Just before a pipeline is unregistered (by itself, an operator, the death watch or the
        reclaim after a fence), while the state still shows what it holds."""


class ObserverBase:
    """Every :class:`SchedulerObserver` call as a no-op."""

    def changed(self, event: str, pipeline_id: str | None) -> None:
        pass

    def planned(self, plan: Plan | None, seconds: float) -> None:
        pass

    def answered(self, events: Sequence[Event]) -> None:
        pass

    def resized(self, action: ResizeAction, outcome: ResizeOutcome) -> None:
        pass

    def removing(self, pipeline_id: str, reason: str) -> None:
        pass


__all__ = ["ObserverBase", "SchedulerObserver"]
