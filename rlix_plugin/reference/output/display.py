"""The terminal view of a run, with rich: live progress bars while it runs, a table at the end.

:class:`LiveProgress` shows one bar per pipeline (samples of the current rollout), with the
rollout number, the awake engines and the phase; a daemon thread refreshes it ten times a second
from the pipelines' statuses (read-only). :func:`result_table` renders a finished run.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from rlix_plugin.reference.harness.metrics import RunResult
from rlix_plugin.reference.harness.status import PipelineStatus

_REFRESH_S = 0.1


class LiveProgress:
    """Implements :class:`~rlix_plugin.reference.harness.runner.ProgressView`."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._statuses: Mapping[str, PipelineStatus] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, statuses: Mapping[str, PipelineStatus]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._statuses = statuses
        self._progress = Progress(
            TextColumn("[bold]{task.description:>8}"),
            TextColumn("rollout {task.fields[rollout]}"),
            BarColumn(bar_width=28),
            MofNCompleteColumn(),
            TextColumn("samples  awake {task.fields[awake]}"),
            TextColumn("[dim]{task.fields[phase]}"),
            console=self.console,
            auto_refresh=False,
        )
        for name, status in statuses.items():
            view = status.view()
            self._tasks[name] = self._progress.add_task(
                name, total=view.samples_per_rollout, rollout="-", awake="-", phase=view.phase
            )
        self._progress.start()
        self._thread = threading.Thread(target=self._run, name="rlix-reference-display", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._progress is not None:
            self._update()
            self._progress.stop()

    def _run(self) -> None:
        while not self._stop.wait(_REFRESH_S):
            self._update()

    def _update(self) -> None:
        for name, status in self._statuses.items():
            v = status.view()
            rollout = (
                min(v.rollout + 1, v.rollouts_total) if v.rollouts_completed < v.rollouts_total else v.rollouts_total
            )
            self._progress.update(
                self._tasks[name],
                completed=v.samples_done,
                rollout=f"{rollout}/{v.rollouts_total}",
                awake=f"{v.awake}/{v.dp_size}",
                phase=v.phase if v.stall_s < 1.0 else f"{v.phase}, stalled {v.stall_s:.0f}s",
            )
        self._progress.refresh()


def result_table(result: RunResult) -> Any:
    """A rich renderable summarising ``result``."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"scenario {result.scenario} ({result.backend} backend)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("pipeline", "rollouts", "samples", "reward", "wait s", "stall s", "retracted"):
        table.add_column(column, justify="left" if column == "pipeline" else "right")
    for name, m in result.pipelines.items():
        reward = "-" if m.reward_first is None else f"{m.reward_first:.2f}->{m.reward_last:.2f}"
        label = name if m.phase == "done" else f"{name} ({m.phase})"
        table.add_row(
            label,
            f"{m.rollouts_completed}/{m.rollouts}",
            str(m.samples_completed),
            reward,
            f"{m.gpu_wait_s:.2f}",
            f"{m.max_stall_s:.2f}",
            str(m.retracted_samples),
        )
    lines = [
        f"wall time {result.wall_s:.2f}s   lower bound {result.lower_bound_s:.2f}s "
        f"({result.wall_s / result.lower_bound_s:.2f}x)   GPU busy {100 * result.gpu_busy_fraction:.0f}%",
    ]
    if result.static_partition_s is not None:
        lines.append(
            f"static partition (same work, pool split evenly) {result.static_partition_s:.2f}s "
            f"({result.static_partition_s / result.wall_s:.2f}x the shared run)"
        )
    status = Text("OK", style="bold green") if result.ok else Text("FAILED", style="bold red")
    return Group(table, Text("\n".join(lines)), status)


__all__ = ["LiveProgress", "result_table"]
