"""Plain data that crosses the hooks.

Everything here is stdlib-only, immutable and picklable: values travel between processes (a Ray
actor, a rollout worker) unchanged.

Units: progress and step targets are counted in **samples** (trajectories), never in prompt
groups. An integration whose framework counts groups (miles) multiplies by the group size once, at
its edge, so that the scheduler compares the remaining work of different pipelines in one unit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import InvalidRequestError

#: Cluster names a pipeline may register. ``actor_infer`` is the elastic generation cluster.
ACTOR_TRAIN = "actor_train"
ACTOR_INFER = "actor_infer"
CRITIC = "critic"
REFERENCE = "reference"
CLUSTER_NAMES: tuple[str, ...] = (ACTOR_TRAIN, ACTOR_INFER, CRITIC, REFERENCE)

#: Progress stream modes. A pipeline reports either one ``full`` stream (full fine-tune) or one
#: ``lora`` stream per adapter; mixing the two in one pipeline is an error.
MODE_FULL = "full"
MODE_LORA = "lora"
PROGRESS_MODES: tuple[str, ...] = (MODE_FULL, MODE_LORA)


class Priority(enum.IntEnum):
    """Stage priorities: a lower number wins. Stages 0-5 have fixed device mappings and may preempt
    generation workers on their GPUs; GENERATION is elastic and shared by gap ratio."""

    INITIALIZATION = 0
    ACTOR_TRAINING = 1
    CRITIC_TRAINING = 2
    OLD_LOG_PROBS = 3
    REF_LOG_PROBS = 4
    VALUE_COMPUTE = 5
    GENERATION = 6


@dataclass(frozen=True)
class ClusterSpec:
    """How one cluster of a pipeline maps onto the GPU pool.

    ``gpus`` are global GPU ids (node ``k`` owns ids ``k*gpus_per_node ..``). They are split, in
    order, into data-parallel bundles of ``tp_size`` GPUs; bundle ``i`` is DP rank ``i``. Every
    bundle must be contiguous and inside one node.
    """

    tp_size: int
    gpus: tuple[int, ...]

    @property
    def dp_size(self) -> int:
        return len(self.gpus) // self.tp_size if self.tp_size > 0 else 0

    def bundle(self, dp_rank: int) -> tuple[int, ...]:
        """GPU ids of DP rank ``dp_rank``."""
        start = dp_rank * self.tp_size
        return self.gpus[start : start + self.tp_size]


@dataclass(frozen=True)
class Grant:
    """What a blocking request returns once it is answered.

    ``scheduled`` is False when no scheduler answered (the no-op default): the framework then runs
    as if it owned its GPUs. ``dp_ranks`` is set for generation grants (the awake DP workers).
    """

    pipeline_id: str
    cluster: str
    gpus: tuple[int, ...] = ()
    dp_ranks: tuple[int, ...] = ()
    scheduled: bool = False
    waited_s: float = 0.0


@dataclass(frozen=True)
class SwitchCosts:
    """What switching one generation engine of a pipeline costs, in seconds (declared at
    registration as an estimate; the scheduler replaces it with what it measures).

    ``wake_seconds``: resume the engine and load its weights onto the GPUs. ``sleep_seconds``:
    pause it, retract in-flight work, release its memory. ``sync_seconds``: push new weights into
    an awake engine after a training step. An engine that is waking or falling asleep holds its
    GPUs and generates nothing.
    """

    wake_seconds: float = 0.0
    sleep_seconds: float = 0.0
    sync_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("wake_seconds", "sleep_seconds", "sync_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise InvalidRequestError(f"SwitchCosts.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class PipelineLimits:
    """What a pipeline declares about itself at registration, and the scheduler holds it to.

    ``max_step_target``: the most samples one rollout may ask for (``None``: no bound); a larger
    ``step_target`` is refused. ``min_bundles`` / ``max_bundles``: a quota of generation bundles
    (DP workers): the planner gives the pipeline at least ``min_bundles`` while it has demand
    (when they can be freed) and never more than ``max_bundles``.

    ``samples_per_engine``: how many samples of a rollout one generation engine (DP worker) runs
    at once -- its batch: vLLM's ``max_num_seqs``, SGLang's ``max_running_requests``, in the
    units of ``step_target`` (divide by the group size when a step counts GRPO groups). The
    switch-aware planner counts a pipeline's *queued* samples as its remaining samples minus its
    bundles times this: a bundle moved to a pipeline whose samples all run already on its own
    engines would have nothing to do. Default 1, one sample per engine. Overstating it makes the
    planner move fewer bundles; understating it makes it move bundles that sit idle.
    """

    max_step_target: int | None = None
    min_bundles: int = 1
    max_bundles: int | None = None
    samples_per_engine: int = 1

    def __post_init__(self) -> None:
        for name in ("max_step_target", "max_bundles"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidRequestError(f"PipelineLimits.{name} must be an int >= 1 or None, got {value!r}")
        spe = self.samples_per_engine
        if isinstance(spe, bool) or not isinstance(spe, int) or spe < 1:
            raise InvalidRequestError(f"PipelineLimits.samples_per_engine must be an int >= 1, got {spe!r}")
        if isinstance(self.min_bundles, bool) or not isinstance(self.min_bundles, int) or self.min_bundles < 0:
            raise InvalidRequestError(f"PipelineLimits.min_bundles must be an int >= 0, got {self.min_bundles!r}")
        if self.max_bundles is not None and self.min_bundles > self.max_bundles:
            raise InvalidRequestError(
                f"PipelineLimits.min_bundles ({self.min_bundles}) exceeds max_bundles ({self.max_bundles})"
            )


@dataclass(frozen=True)
class StreamProgress:
    """Latest progress of one stream, as the scheduler saw it."""

    mode: str
    adapter_id: str | None
    step_target: int
    completed: int
    target_weight_version: int = 0
    open: bool = True

    @property
    def remaining(self) -> int:
        return self.step_target - self.completed


__all__ = [
    "ACTOR_INFER",
    "ACTOR_TRAIN",
    "CLUSTER_NAMES",
    "CRITIC",
    "ClusterSpec",
    "Grant",
    "MODE_FULL",
    "MODE_LORA",
    "PROGRESS_MODES",
    "PipelineLimits",
    "Priority",
    "REFERENCE",
    "StreamProgress",
    "SwitchCosts",
]
