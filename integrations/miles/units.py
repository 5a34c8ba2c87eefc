"""The one place where miles' unit meets the scheduler's.

miles counts rollout progress in **groups**: ``args.rollout_batch_size`` prompts per step, each
generated ``args.n_samples_per_prompt`` times; ``begin_progress_batch`` gets a target in groups
and ``bump_completed`` is called once per accepted group. The rlix hooks count **samples**, so
that the scheduler compares the remaining work of pipelines with different group sizes in one
unit (see :mod:`rlix_plugin.hookspecs.types`).

Everything on the miles side of this integration (the hooks object miles holds, the driver's
``signal_rollout_demand(rollout_id, step_target)``) takes groups; everything that crosses the rlix
hooks is samples; :meth:`GroupUnits.samples` is the only conversion. One keyword on the miles
side counts samples and says so in its name: ``install(..., samples_per_engine=...)``, an engine's
batch, which holds one request per sample whatever its group; it crosses unconverted.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlix_plugin.hookspecs import InvalidRequestError


@dataclass(frozen=True)
class GroupUnits:
    """Group size of one miles pipeline (``args.n_samples_per_prompt``)."""

    n_samples_per_prompt: int

    def __post_init__(self) -> None:
        n = self.n_samples_per_prompt
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InvalidRequestError(f"n_samples_per_prompt must be an int > 0, got {n!r}")

    def samples(self, groups: int) -> int:
        """Samples in ``groups`` groups (what crosses the rlix hooks)."""
        return int(groups) * self.n_samples_per_prompt


def check_groups(name: str, value: object, *, allow_zero: bool = False) -> int:
    """``value`` as a group count, or :class:`InvalidRequestError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidRequestError(f"{name} must be an int {bound} (groups), got {value!r}")
    return value


__all__ = ["GroupUnits", "check_groups"]
