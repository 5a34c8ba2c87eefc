"""Draw a run's recording as a PNG timeline with matplotlib.

Top panel: one row per GPU, a bar for every span it was held, coloured by pipeline (solid and
outlined: training; lighter: generation). Middle: each pipeline's open demand (the
registry's step target). Bottom: pending requests per priority. The x axis is seconds since the
run started.
"""

from __future__ import annotations

import pathlib

from rlix_plugin.hookspecs import Priority
from rlix_plugin.reference.harness.recorder import Recorder


def draw_timeline(recorder: Recorder, path: str | pathlib.Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    colour = {name: colours[i % len(colours)] for i, name in enumerate(recorder.pipelines)}
    spans = recorder.gpu_intervals()
    end = recorder.end if recorder.end is not None else recorder.now()

    fig, (ax_gpu, ax_demand, ax_pending) = plt.subplots(
        3,
        1,
        sharex=True,
        figsize=(11, 2.2 + 0.45 * recorder.num_gpus),
        gridspec_kw={"height_ratios": [max(recorder.num_gpus, 2), 1.6, 1.0]},
    )
    try:
        for gpu, gpu_spans in enumerate(spans):
            for start, stop, (pipeline, role, _rank) in gpu_spans:
                training = role != "infer"
                ax_gpu.broken_barh(
                    [(start, stop - start)],
                    (gpu - 0.4, 0.8),
                    facecolors=colour.get(pipeline, "grey"),
                    alpha=1.0 if training else 0.45,
                    edgecolor="black" if training else "none",
                    linewidth=0.6,
                )
        ax_gpu.set_yticks(range(recorder.num_gpus), [f"GPU {g}" for g in range(recorder.num_gpus)])
        ax_gpu.set_ylim(recorder.num_gpus - 0.5, -0.5)
        ax_gpu.set_title(title or "GPU ownership over time")
        handles = [Patch(facecolor=colour[n], alpha=0.45, label=f"{n} generate") for n in recorder.pipelines]
        handles += [Patch(facecolor=colour[n], edgecolor="black", label=f"{n} train") for n in recorder.pipelines]
        ax_gpu.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)

        for name, points in recorder.demand_series().items():
            xs, ys = _steps(points, end)
            ax_demand.step(xs, ys, where="post", color=colour.get(name, "grey"), label=name)
        ax_demand.set_ylabel("open demand\n(samples)", fontsize=8)
        ax_demand.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)

        for priority, points in sorted(recorder.pending_series().items()):
            xs, ys = _steps(points, end)
            label = Priority(priority).name.lower() if priority in Priority._value2member_map_ else str(priority)
            ax_pending.step(xs, ys, where="post", label=f"priority {priority}: {label.replace('_', ' ')}")
        ax_pending.set_ylabel("pending\nrequests", fontsize=8)
        ax_pending.set_xlabel("seconds since start")
        ax_pending.set_xlim(0, max(end, 1e-3))
        if recorder.pending_series():
            ax_pending.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _steps(points: list[tuple[float, int]], end: float) -> tuple[list[float], list[int]]:
    xs = [t for t, _ in points] + [end]
    ys = [v for _, v in points] + [points[-1][1] if points else 0]
    return xs, ys


__all__ = ["draw_timeline"]
