"""The demand ledger: the durable open-demand registry and the rollout progress streams.

Pure: plain dicts, the caller passes the time. What the planner reads from here is one number per
pipeline, :meth:`DemandLedger.remaining`; what the cycle trigger reads is whether that number
changed in a way that matters.

* ``open_demand``: ``pipeline_id -> step_target``, written by every generation request (the
  pre-signal before a rollout dispatches anything) and kept until the generation cluster is
  released, the pipeline's last progress stream ends, or it unregisters. This is what makes the
  seed race (two pipelines preempted to nothing at a rollout boundary, the first to report
  winning every engine) impossible: demand is visible for the whole rollout lifecycle.
* ``epochs``: ``pipeline_id -> rollout_id``, the rollout the open demand and the streams belong
  to. ``signal_demand`` of a newer rollout (or a progress report of one) starts a new epoch and
  drops the older rollout's streams; a report of an older rollout is ignored, and so is a late
  report of a rollout whose generation cluster was released (``closed``). So the late end of
  rollout k, delivered from another process after rollout k+1 signalled its demand, cannot
  retire k+1's demand: the race is impossible by construction. Within one epoch, reports are
  applied in the order their transport delivers them (the local loop in call order; the Ray
  actor by each sender's sequence numbers).
* ``progress``: latest report per (pipeline, mode, adapter) stream of the current epoch;
  completed is clamped to ``[0, step_target]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Union

from rlix_plugin.hookspecs import (
    MODE_FULL,
    MODE_LORA,
    PROGRESS_MODES,
    InvalidRequestError,
    StreamProgress,
)
from rlix_plugin.progress import BEGIN, END, PROGRESS, ProgressReport

StreamKey = tuple[str, Union[str, None]]

#: What :meth:`DemandLedger.apply` did with a report.
IGNORED, APPLIED, RETIRED = "ignored", "applied", "retired"

_KINDS = (BEGIN, PROGRESS, END)


def require_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidRequestError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class DemandLedger:
    """Open demand and progress of every pipeline. Mutated only by its methods."""

    def __init__(self) -> None:
        self.open_demand: dict[str, int] = {}
        self.progress: dict[str, dict[StreamKey, StreamProgress]] = {}
        #: The rollout (epoch) each pipeline is in: its open demand and streams are that rollout's.
        self.epochs: dict[str, int] = {}
        #: Pipelines whose current epoch ended with the release of their generation cluster.
        self.closed: set[str] = set()
        #: When each pipeline's open demand last ended (its rollout finished), for the planner's
        #: anticipation of the stage that follows a rollout.
        self.retired_at: dict[str, float] = {}
        #: Rollouts each pipeline has started (demand opened while it had none): its progress
        #: through its job, which the policy uses to keep pipelines abreast.
        self.rollouts: dict[str, int] = {}

    # -- the registry ---------------------------------------------------------------------------------

    def open(self, pipeline_id: str, step_target: int) -> None:
        if pipeline_id not in self.open_demand:
            self.rollouts[pipeline_id] = self.rollouts.get(pipeline_id, 0) + 1
        self.open_demand[pipeline_id] = step_target
        self.retired_at.pop(pipeline_id, None)

    def retire(self, pipeline_id: str, now: float) -> bool:
        """End the pipeline's open demand; True if it had one."""
        if self.open_demand.pop(pipeline_id, None) is None:
            return False
        self.retired_at[pipeline_id] = now
        return True

    def forget(self, pipeline_id: str) -> None:
        for table in (self.open_demand, self.progress, self.epochs, self.retired_at, self.rollouts):
            table.pop(pipeline_id, None)
        self.closed.discard(pipeline_id)

    # -- epochs ---------------------------------------------------------------------------------------

    def check_rollout(self, pipeline_id: str, rollout_id: object) -> int:
        """Validate the epoch a demand names, changing nothing.

        :raises InvalidRequestError: not an int >= 0, or older than the pipeline's current rollout.
        """
        require_int("rollout_id", rollout_id, 0)
        assert isinstance(rollout_id, int)
        current = self.epochs.get(pipeline_id)
        if current is not None and rollout_id < current:
            raise InvalidRequestError(
                f"rollout_id {rollout_id} of pipeline {pipeline_id!r} is older than its current rollout {current}; "
                "rollout ids must not go back"
            )
        return rollout_id

    def open_rollout(self, pipeline_id: str, rollout_id: int) -> None:
        """Rollout ``rollout_id`` signals its demand: a newer one starts its epoch, which drops the
        older rollout's streams; the same one again (a retried signal) keeps them."""
        self.check_rollout(pipeline_id, rollout_id)
        if self.epochs.get(pipeline_id) != rollout_id:
            self.epochs[pipeline_id] = rollout_id
            self.progress.pop(pipeline_id, None)
        self.closed.discard(pipeline_id)

    def close(self, pipeline_id: str, now: float) -> None:
        """The generation cluster is released: the rollout is over. Its demand and any stream whose
        end never came end with it, and its late reports are ignored from now on."""
        self.retire(pipeline_id, now)
        self.progress.pop(pipeline_id, None)
        if pipeline_id in self.epochs:
            self.closed.add(pipeline_id)

    # -- progress streams -----------------------------------------------------------------------------

    def check_stream(self, pipeline_id: str, mode: str, adapter_id: str | None) -> StreamKey:
        if mode not in PROGRESS_MODES:
            raise InvalidRequestError(f"progress mode must be one of {list(PROGRESS_MODES)}, got {mode!r}")
        if mode == MODE_FULL and adapter_id is not None:
            raise InvalidRequestError(f"mode {MODE_FULL!r} takes no adapter_id, got {adapter_id!r}")
        if mode == MODE_LORA and not adapter_id:
            raise InvalidRequestError(f"mode {MODE_LORA!r} needs an adapter_id, got {adapter_id!r}")
        return (mode, adapter_id)

    def check_report(self, report: object) -> ProgressReport:
        """Validate a report's own fields, changing nothing.

        :raises InvalidRequestError: naming the bad value.
        """
        if not isinstance(report, ProgressReport):
            raise InvalidRequestError(f"not a progress report: {report!r:.80}")
        if report.kind not in _KINDS:
            raise InvalidRequestError(f"progress report kind must be one of {list(_KINDS)}, got {report.kind!r}")
        require_int("rollout_id", report.rollout_id, 0)
        self.check_stream(report.pipeline_id, report.mode, report.adapter_id)
        require_int("step_target", report.step_target, 1)
        if not isinstance(report.completed, int) or isinstance(report.completed, bool):
            raise InvalidRequestError(f"completed must be an int, got {report.completed!r}")
        if not isinstance(report.target_weight_version, int) or isinstance(report.target_weight_version, bool):
            raise InvalidRequestError(f"target_weight_version must be an int, got {report.target_weight_version!r}")
        return report

    def apply(self, report: ProgressReport, now: float, *, checked: bool = False) -> str:
        """Apply one report of the progress path: :data:`IGNORED` (a rollout older than the
        pipeline's current one, or one whose generation cluster was released), :data:`APPLIED`,
        or :data:`RETIRED` (an end that closed the pipeline's last stream, retiring its open
        demand). A report of a newer rollout starts its epoch (a framework that reports progress
        without signalling demand first). Latest wins per stream within an epoch. ``checked``: the
        caller already passed ``report`` through :meth:`check_report` (it is not checked twice).

        :raises InvalidRequestError: naming the bad value; nothing was changed.
        """
        if not checked:
            self.check_report(report)
        pid, rollout_id, key = report.pipeline_id, report.rollout_id, (report.mode, report.adapter_id)
        current = self.epochs.get(pid)
        if current is not None and (rollout_id < current or (rollout_id == current and pid in self.closed)):
            return IGNORED
        streams = self.progress.get(pid, {}) if current in (None, rollout_id) else {}
        existing = {m for m, _ in streams}
        if existing and report.mode not in existing:
            raise InvalidRequestError(
                f"pipeline {pid!r} reports {sorted(existing)} progress; mixing in {report.mode!r} streams is not allowed"
            )
        if rollout_id != current:
            # A newer rollout (or the first this ledger hears of): its epoch starts here; a
            # ledger restored from a record without epochs keeps the streams it restored.
            if current is not None:
                self.progress.pop(pid, None)
            self.epochs[pid] = rollout_id
            self.closed.discard(pid)
        if report.kind == END:
            streams = self.progress.get(pid, {})
            if streams.pop(key, None) is None or streams:
                return APPLIED
            del self.progress[pid]
            return RETIRED if self.retire(pid, now) else APPLIED
        self.progress.setdefault(pid, {})[key] = StreamProgress(
            mode=report.mode,
            adapter_id=report.adapter_id,
            step_target=report.step_target,
            completed=min(max(report.completed, 0), report.step_target),
            target_weight_version=report.target_weight_version,
        )
        return APPLIED

    # -- reading --------------------------------------------------------------------------------------

    def remaining(self, pipeline_id: str) -> int:
        """Samples the pipeline still has to generate: its streams' remaining work, or, while its
        open demand has no stream yet, the registry's step target."""
        streams = self.progress.get(pipeline_id)
        if streams:
            return sum(s.step_target - s.completed for s in streams.values())
        return self.open_demand.get(pipeline_id, 0)

    def completed(self, pipeline_id: str) -> int:
        streams = self.progress.get(pipeline_id)
        return sum(s.completed for s in streams.values()) if streams else 0

    def step_target(self, pipeline_id: str) -> int:
        streams = self.progress.get(pipeline_id)
        if streams:
            return sum(s.step_target for s in streams.values())
        return self.open_demand.get(pipeline_id, 0)

    def pipelines(self) -> Iterable[str]:
        return self.open_demand.keys()


__all__ = ["APPLIED", "IGNORED", "RETIRED", "DemandLedger", "StreamKey", "require_int"]
