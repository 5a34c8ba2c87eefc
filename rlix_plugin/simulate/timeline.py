"""Draw a comparison's timelines as one PNG with matplotlib: a panel per policy, on one time axis.

Each panel stacks the GPUs every pipeline holds (training, engines awake or switching), coloured
by pipeline, up to the pool size; over it, the GPUs busy (generating at least one sequence, or
training) and the useful GPUs (each engine weighted by its throughput over its peak) as lines.
The gap between the stack and the busy line is GPUs held and idle; between busy and useful,
engines running far below their batch (a rollout's tail).
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .compare import Comparison

#: Pipelines named in a legend; beyond this the colours speak for themselves.
_LEGEND_LIMIT = 16


def draw_timelines(comparison: Comparison, path: str | pathlib.Path) -> None:
    """Write the PNG. Every run of ``comparison`` must carry a timeline (``compare(...,
    timeline=True)``).

    :raises ValueError: a run has no timeline.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    runs = comparison.runs
    missing = [policy for policy, run in runs.items() if run.timeline is None]
    if missing:
        raise ValueError(f"no timeline recorded for {missing}; simulate with timeline=True")
    names = [p.name for p in comparison.scenario.pipelines]
    colours = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]  # a ListedColormap
    colour = {name: colours[i % len(colours)] for i, name in enumerate(names)}
    end = max(run.wall_s for run in runs.values())
    fig, axes = plt.subplots(len(runs), 1, sharex=True, squeeze=False, figsize=(12, 2.6 * len(runs) + 0.8))
    try:
        for ax, (policy, run) in zip(axes[:, 0], runs.items(), strict=False):
            timeline = run.timeline
            assert timeline is not None
            times = timeline.times
            ax.stackplot(
                times,
                [timeline.held[n] for n in names],
                colors=[colour[n] for n in names],
                step="post",
                alpha=0.55,
                linewidth=0,
            )
            busy = [g + t for g, t in zip(timeline.generating, timeline.training, strict=False)]
            ax.step(times, busy, where="post", color="black", linewidth=0.9, label="busy (generating or training)")
            ax.step(
                times,
                timeline.useful,
                where="post",
                color="crimson",
                linewidth=0.9,
                label="useful (throughput-weighted)",
            )
            ax.set_ylim(0, timeline.num_gpus * 1.02)
            ax.set_ylabel("GPUs")
            ax.set_title(
                f"{policy}: makespan {run.wall_s:,.0f} s, GPU busy {run.gpu_busy_fraction:.0%}, "
                f"useful {run.gpu_useful_fraction:.0%}, {run.switches:,} switches",
                fontsize=9,
                loc="left",
            )
            ax.legend(loc="upper right", fontsize=7, frameon=False)
        if len(names) <= _LEGEND_LIMIT:
            from matplotlib.patches import Patch

            handles = [Patch(facecolor=colour[n], alpha=0.55, label=n) for n in names]
            fig.legend(
                handles=handles,
                loc="upper center",
                bbox_to_anchor=(0.5, 0.965),
                ncol=min(8, len(names)),
                fontsize=7,
                frameon=False,
            )
        axes[-1, 0].set_xlim(0, max(end, 1e-3))
        axes[-1, 0].set_xlabel("seconds (simulated)")
        fig.suptitle(f"{comparison.scenario.name}: GPUs held per pipeline (stacked) and used", fontsize=10, y=0.995)
        legend_rows = -(-len(names) // 8) if len(names) <= _LEGEND_LIMIT else 0
        fig.tight_layout(rect=(0, 0, 1, 0.965 - 0.025 * legend_rows))
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


__all__ = ["draw_timelines"]
