"""The rlix hook contract: hookspecs, their marker pair, and the data and errors they carry.

Import cost is pluggy and the standard library only.

Hook specs, one module per concern:

* :mod:`.lifecycle` -- a pipeline joins and leaves the pool;
* :mod:`.demand` -- the framework asks for GPUs and reports rollout progress;
* :mod:`.supply` -- the scheduler resizes a pipeline's generation engines.
"""

from __future__ import annotations

from . import demand, lifecycle, supply
from .errors import (
    BackendUnavailableError,
    InvalidRequestError,
    NotPipelineOwnerError,
    PipelineGoneError,
    PlanInvariantError,
    RlixError,
    SchedulerTimeoutError,
    SchedulerUnavailableError,
)
from .markers import PROJECT_NAME, hookimpl, hookspec
from .types import (
    ACTOR_INFER,
    ACTOR_TRAIN,
    CLUSTER_NAMES,
    CRITIC,
    MODE_FULL,
    MODE_LORA,
    PROGRESS_MODES,
    REFERENCE,
    ClusterSpec,
    Grant,
    PipelineLimits,
    Priority,
    StreamProgress,
    SwitchCosts,
)

#: The modules holding hook specs, in the order the plugin manager adds them.
SPEC_MODULES = (lifecycle, demand, supply)


def hook_names() -> tuple[str, ...]:
    """Names of every hook in the contract."""
    return tuple(name for module in SPEC_MODULES for name in module.__all__)


__all__ = [
    "ACTOR_INFER",
    "ACTOR_TRAIN",
    "BackendUnavailableError",
    "CLUSTER_NAMES",
    "CRITIC",
    "ClusterSpec",
    "Grant",
    "InvalidRequestError",
    "MODE_FULL",
    "MODE_LORA",
    "NotPipelineOwnerError",
    "PROGRESS_MODES",
    "PROJECT_NAME",
    "PipelineGoneError",
    "PipelineLimits",
    "PlanInvariantError",
    "Priority",
    "REFERENCE",
    "RlixError",
    "SPEC_MODULES",
    "SchedulerTimeoutError",
    "SchedulerUnavailableError",
    "StreamProgress",
    "SwitchCosts",
    "hook_names",
    "hookimpl",
    "hookspec",
]
