"""The scheduler's decisions without I/O: what both the async service and the simulator drive.

:class:`SchedulerCore` ties the pure parts together -- the state (:mod:`.state`), the sharing
policy (:mod:`.policy`), the cycle trigger (:mod:`.trigger`), the planner (:mod:`.planner`) and
the validator (:mod:`.validation`) -- behind four calls a driver makes:

* :meth:`note` after every change (a request, a release, progress, a resize outcome): the
  trigger decides whether a planning pass is due;
* :meth:`plan` when the driver gets round to it: plans, validates and starts the moves;
* :meth:`resized` with each resize call's outcome;
* :meth:`take_actions` / :meth:`take_events`: the resize calls to make, and who to answer.

:meth:`deadline` says when time alone makes a pass due (a residency or an anticipation running
out). The driver owns time: the live service passes the wall clock, the simulator virtual time.
"""

from __future__ import annotations

from collections.abc import Callable

from .plan import Plan
from .planner import plan_cycle
from .policy import DEFAULT_POLICY, Policy, get_policy
from .state import Event, ResizeAction, ResizeOutcome, SchedulerState
from .topology import PoolTopology
from .trigger import ResidencyMemo, next_deadline, wants_cycle
from .validation import validate_plan


class SchedulerCore:
    """State, policy and trigger of one scheduler; every method is synchronous and pure of I/O.

    :param durable_demand: Keep the open-demand registry in planning (always, outside tests that
        reproduce the pre-registry race).
    """

    def __init__(
        self,
        pool: PoolTopology,
        clock: Callable[[], float],
        *,
        policy: Policy | str = DEFAULT_POLICY,
        durable_demand: bool = True,
    ) -> None:
        self.state = SchedulerState(pool, clock)
        self.policy = get_policy(policy)
        self.durable_demand = durable_demand
        #: Planning passes that started at least one move.
        self.cycles = 0
        self.dirty = False
        #: When the last planning pass ran (on the state's clock).
        self.last_pass_at = clock()
        #: Generation bundles per pipeline the last planning pass aimed at (its entitlement).
        self.targets: dict[str, int] = {}
        self._residency = ResidencyMemo()

    def note(self, event: str, pipeline_id: str | None = None) -> bool:
        """Record a change; True when it makes a planning pass due."""
        since = self.state.clock() - self.last_pass_at
        if wants_cycle(
            self.state, self.policy, event, pipeline_id, durable_demand=self.durable_demand, since_last_pass_s=since
        ):
            self.dirty = True
        return self.dirty

    def deadline(self, now: float) -> float | None:
        """When a switch-cost rule stops holding a bundle back (a pass is due then), or None."""
        return next_deadline(self.state, self.policy, now, self._residency)

    def plan(self) -> Plan | None:
        """Run a due planning pass: plan, validate (:class:`PlanInvariantError` on a broken
        invariant, with nothing started) and start its moves. None when nothing changed."""
        if not self.dirty:
            return None
        self.dirty = False
        self.last_pass_at = self.state.clock()
        plan = plan_cycle(self.state, self.policy, durable_demand=self.durable_demand)
        self.targets = dict(plan.targets)
        if plan.is_empty():
            return None
        validate_plan(self.state, plan)
        self.state.start(plan)
        self.cycles += 1
        return plan

    def resized(self, action: ResizeAction, outcome: ResizeOutcome) -> None:
        self.state.resized(action, outcome)
        self.note("resized", action.pipeline_id)

    def take_actions(self) -> list[ResizeAction]:
        return self.state.take_actions()

    def take_events(self) -> list[Event]:
        return self.state.take_events()


__all__ = ["SchedulerCore"]
