"""Errors a hook implementation may raise, part of the contract.

Every message names the offending value; a call that raises has changed nothing.
"""

from __future__ import annotations


class RlixError(RuntimeError):
    """Base of every error rlix raises on purpose."""


class InvalidRequestError(RlixError, ValueError):
    """Bad input: an unknown pipeline or cluster, a bad topology, a priority mismatch.

    Raised before any state changes."""


class SchedulerTimeoutError(RlixError, TimeoutError):
    """A blocking call waited longer than its timeout.

    ``diagnostic`` holds the scheduler's view at the time (open demand, holders of each GPU,
    pending queue per priority, last progress) so that a stall is never silent."""

    def __init__(self, message: str, diagnostic: str = "") -> None:
        super().__init__(f"{message}\n{diagnostic}" if diagnostic else message)
        self.diagnostic = diagnostic


class NotPipelineOwnerError(RlixError, PermissionError):
    """The caller does not hold the pipeline's lease (or, for an operator action, the operator
    credential). The message names the pipeline; nothing was changed."""


class PipelineGoneError(RlixError):
    """The pipeline was unregistered (or fenced) while the caller waited."""


class PlanInvariantError(RlixError):
    """A scheduling plan broke an invariant; the plan was not applied and every waiter is woken."""


class SchedulerUnavailableError(RlixError, ConnectionError):
    """The scheduler could not be reached: it is gone for good (stopped, not restarting), did not
    come back in time after a crash, or no cluster is running."""


class BackendUnavailableError(RlixError, ImportError):
    """A backend was selected that is not implemented or whose dependencies are missing."""


__all__ = [
    "BackendUnavailableError",
    "InvalidRequestError",
    "NotPipelineOwnerError",
    "PipelineGoneError",
    "PlanInvariantError",
    "RlixError",
    "SchedulerTimeoutError",
    "SchedulerUnavailableError",
]
