"""Run a scenario: every pipeline in its own thread on one shared scheduler, a watchdog, the
recording, and the metrics at the end.

Contract of :func:`run_scenario`: it returns a :class:`~.metrics.RunResult` and never hangs --
every wait is bounded (``stall_timeout_s`` for a stalled pipeline, ``timeout_s`` for the whole
run); a stop aborts every pipeline (their blocked scheduler calls are woken by unregistering them),
joins their threads, stops the engines and closes the shared backend, in ``finally`` blocks. It
raises only for bad input (:class:`~rlix_plugin.hookspecs.InvalidRequestError`; a scenario that
sets fields only the simulator honours is refused, :func:`~rlix_plugin.scenario.check_live`) or an unavailable
backend (:class:`~rlix_plugin.hookspecs.BackendUnavailableError`), before any pipeline starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from rlix_plugin.frontend import Hooks
from rlix_plugin.reference.framework.engines import EnginePool
from rlix_plugin.reference.framework.observer import DONE, FAILED, FINAL_PHASES, Observers
from rlix_plugin.reference.framework.pipeline import ReferencePipeline
from rlix_plugin.reference.framework.policy import Trainer, WeightStore
from rlix_plugin.reference.framework.task import task_offset
from rlix_plugin.scenario import Scenario, ScenarioError, check_live
from rlix_plugin.scenario.static import static_partition
from rlix_plugin.scenario.workload import lower_bound

from .metrics import PipelineMetrics, RunResult
from .recorder import Recorder
from .shared_backend import SharedBackend, open_shared_backend
from .status import PipelineStatus
from .watchdog import Watchdog

log = logging.getLogger(__name__)

#: How long a stopped pipeline thread may take to unwind before it is reported as stuck.
_UNWIND_S = 15.0


@dataclass(frozen=True)
class RunOptions:
    """How to run a scenario.

    :param time_scale: Multiplies every scenario duration (tests use < 1).
    :param stall_timeout_s: Open demand with no awake engine for longer than this stops the run.
    :param timeout_s: Bound on the whole run.
    :param measure_static: Also run the static-partition baseline and report its wall time.
    :param legacy_demand: Tests only -- the pre-fix semantics of the seed document: a scheduler
        that ignores the durable open-demand registry and pipelines that do not pre-signal.
    """

    backend: str = "local"
    backend_options: dict[str, Any] | None = None
    autoload: bool | None = None
    time_scale: float = 1.0
    stall_timeout_s: float = 20.0
    timeout_s: float = 600.0
    measure_static: bool = False
    legacy_demand: bool = False
    resize_timeout_s: float = 60.0
    #: The sharing policy; None: the scenario's (``policy = ...``, default ``finish_first``).
    policy: str | None = None


class ProgressView(Protocol):
    """A live display of the pipelines' statuses (see :mod:`rlix_plugin.reference.output.display`)."""

    def start(self, statuses: Mapping[str, PipelineStatus]) -> None: ...

    def stop(self) -> None: ...


def run_scenario(
    scenario: Scenario,
    options: RunOptions = RunOptions(),
    progress: ProgressView | None = None,
    baseline_progress: ProgressView | None = None,
) -> RunResult:
    """Run ``scenario`` shared on one pool; with ``measure_static`` also run the baseline (only
    when the shared run succeeded: a failed run is reported as it is, at once)."""
    _check(options)
    check_live(scenario)
    started = time.monotonic()
    result = execute(scenario, options, progress)
    if options.measure_static and result.ok:
        left = options.timeout_s - (time.monotonic() - started)  # --timeout bounds both runs together
        try:
            static = static_partition(scenario)
        except ScenarioError as exc:
            result.errors.append(f"no static-partition baseline: {exc}")
            return result
        if left <= 1.0:
            result.errors.append("no static-partition baseline: the run's timeout left no time for it")
            return result
        baseline = execute(static, replace(options, legacy_demand=False, timeout_s=left), baseline_progress)
        if baseline.ok:
            result.static_partition_s = baseline.wall_s
        else:
            result.errors.append(f"static-partition run failed: {baseline.errors or baseline.stalled}")
    return result


def _check(options: RunOptions) -> None:
    from rlix_plugin import arguments as check

    for name in ("time_scale", "stall_timeout_s", "timeout_s", "resize_timeout_s"):
        check.timeout(getattr(options, name), name)


class _Run:
    """One execution: its shared backend, pipelines and the stop procedure."""

    def __init__(self, scenario: Scenario, options: RunOptions, backend: SharedBackend) -> None:
        self.scenario = scenario
        self.options = options
        self.backend = backend
        self.abort = threading.Event()
        self.recorder = Recorder(scenario.gpus)
        self.pipelines: list[ReferencePipeline] = []
        #: Each pipeline's live status (what it reports, with the recorder, to its observer).
        self.statuses: dict[str, PipelineStatus] = {}
        self.stalled: list[str] = []
        self.diagnostic: str | None = None
        self._stop_lock = threading.Lock()

    def build(self) -> None:
        observed = self.backend.add_listener(self.recorder.scheduler_listener)
        # A pipeline may legitimately wait long (a big rollout, another pipeline's training on
        # shared train GPUs); what must not happen is a silent stall, which the watchdog catches.
        # So each wait is bounded only by the run's own timeout.
        wait_timeout_s = self.options.timeout_s
        for config in self.scenario.pipelines:
            pm = self.backend.plugin_manager()  # raises BackendUnavailableError before any start
            status = PipelineStatus(config.name, config.rollouts, config.samples_per_rollout, config.dp_size)
            observer = Observers(status, self.recorder.observer(config.name, framework_feed=not observed))
            trainer = Trainer(config.seed)
            store = WeightStore(trainer.model)
            self.recorder.add_pipeline(config.name, config.bundles(), config.train_gpus, config.samples_per_rollout)
            costs = config.scaled(self.options.time_scale).switch_costs
            pool = EnginePool(
                config.name,
                config.bundles(),
                store,
                observer,
                seed=config.seed,
                offset=task_offset(config.seed),
                switch_costs=costs,
            )
            try:
                pm.register(pool, name=f"reference-engines-{config.name}")
                hooks = Hooks(pm)
                pool.hooks = hooks
            except BaseException:
                pool.close()
                raise
            self.pipelines.append(
                ReferencePipeline(
                    config,
                    hooks,
                    pool,
                    trainer,
                    store,
                    observer,
                    abort=self.abort,
                    time_scale=self.options.time_scale,
                    wait_timeout_s=wait_timeout_s,
                    legacy_demand=self.options.legacy_demand,
                )
            )
            self.statuses[config.name] = status

    def on_stall(self, names: list[str]) -> None:
        """Watchdog callback: capture the diagnostic first (the state at the stall), then stop."""
        views = {name: status.view() for name, status in self.statuses.items()}
        worst = ", ".join(f"{n} ({views[n].stall_s:.1f}s)" for n in names)
        headline = (
            f"watchdog: pipeline(s) {worst} had open demand and no awake engine for longer than "
            f"{self.options.stall_timeout_s:.1f}s"
        )
        self.stalled = list(names)
        self.diagnostic = self.describe(headline)
        self.stop(f"stalled: {', '.join(names)}")

    def describe(self, headline: str) -> str:
        lines = [self.backend.diagnostic(headline), "framework view:"]
        for status in self.statuses.values():
            v = status.view()
            lines.append(
                f"{v.name}: {v.phase}, rollout {min(v.rollout + 1, v.rollouts_total)}/{v.rollouts_total}, "
                f"samples {v.samples_done}/{v.samples_per_rollout}, awake engines {v.awake}/{v.dp_size}, "
                f"open demand {'yes' if v.demand_open else 'no'}, stalled {v.stall_s:.1f}s"
            )
        return "\n".join(lines)

    def stop(self, reason: str) -> None:
        """Abort every pipeline; idempotent, callable from any thread."""
        with self._stop_lock:
            if self.abort.is_set():
                return
            self.abort.set()
        for pipeline in self.pipelines:
            pipeline.pool.abort(reason)
        for pipeline in self.pipelines:
            if self.statuses[pipeline.name].view().phase in FINAL_PHASES:
                continue
            try:  # wakes its blocked scheduler calls with PipelineGoneError
                pipeline.hooks.unregister_pipeline(pipeline_id=pipeline.name, reason=f"run stopped: {reason}")
            except Exception as exc:
                log.debug("unregister %s on stop: %r", pipeline.name, exc)

    def join(self, threads: list[threading.Thread], deadline: float) -> list[str]:
        """Wait for the pipeline threads until ``deadline``; then stop and give them time to unwind.
        Returns the names of threads that never ended."""
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            self.diagnostic = self.diagnostic or self.describe(
                f"run timeout: not finished within {self.options.timeout_s:.1f}s"
            )
            self.stop("run timeout")
            unwind = time.monotonic() + _UNWIND_S
            for thread in threads:
                thread.join(max(0.0, unwind - time.monotonic()))
        return [t.name for t in threads if t.is_alive()]


def execute(scenario: Scenario, options: RunOptions = RunOptions(), progress: ProgressView | None = None) -> RunResult:
    """Run the scenario once, as given (no baseline)."""
    _check(options)
    check_live(scenario)
    backend = open_shared_backend(
        options.backend,
        scenario,
        backend_options=options.backend_options,
        autoload=options.autoload,
        durable_demand=not options.legacy_demand,
        resize_timeout_s=options.resize_timeout_s,
        policy=options.policy or scenario.policy,
    )
    run = _Run(scenario, options, backend)
    try:
        run.build()
        statuses = run.statuses
        watchdog = Watchdog(statuses, options.stall_timeout_s, run.on_stall)
        threads = [threading.Thread(target=p.run, name=f"pipeline-{p.name}", daemon=True) for p in run.pipelines]
        run.recorder.t0 = started = time.monotonic()
        for thread in threads:
            thread.start()
        watchdog.start()
        if progress is not None:
            progress.start(statuses)
        try:
            stuck = run.join(threads, started + options.timeout_s)
        except BaseException:  # Ctrl-C in the caller: stop the pipelines before tearing down
            run.stop("interrupted")
            for thread in threads:
                thread.join(_UNWIND_S)
            raise
        finally:
            watchdog.stop()
            if progress is not None:
                progress.stop()
        wall_s = time.monotonic() - started
        run.recorder.finish()
    finally:
        for pipeline in run.pipelines:
            pipeline.pool.close()
        backend.close()
    return _result(scenario, options, run, wall_s, stuck)


def _result(scenario: Scenario, options: RunOptions, run: _Run, wall_s: float, stuck: list[str]) -> RunResult:
    views = {name: status.view() for name, status in run.statuses.items()}
    errors = [f"{name}: {v.error}" for name, v in views.items() if v.phase == FAILED]
    errors += [f"thread {name} did not stop" for name in stuck]
    complete = all(v.phase == DONE and v.rollouts_completed == v.rollouts_total for v in views.values())
    ok = complete and not run.stalled and not errors
    if not ok and run.diagnostic is None:
        run.diagnostic = run.describe("run failed")
    busy = sum(v.busy_gpu_s for v in views.values())
    rollouts = sum(v.rollouts_completed for v in views.values())
    return RunResult(
        ok=ok,
        scenario=scenario.name,
        backend=options.backend,
        time_scale=options.time_scale,
        wall_s=wall_s,
        pipelines={name: PipelineMetrics.from_view(v) for name, v in views.items()},
        gpu_busy_fraction=busy / (wall_s * scenario.gpus) if wall_s > 0 else 0.0,
        policy=options.policy or scenario.policy,
        switches=sum(v.switches for v in views.values()),
        switches_per_rollout=sum(v.switches for v in views.values()) / rollouts if rollouts else 0.0,
        switch_gpu_s=sum(v.switch_gpu_s for v in views.values()),
        lower_bound_s=lower_bound(scenario, options.time_scale).seconds,
        stalled=run.stalled,
        diagnostic=None if ok else run.diagnostic,
        errors=errors,
        recorder=run.recorder,
        samples={p.name: p.samples for p in run.pipelines},
    )


__all__ = ["ProgressView", "RunOptions", "execute", "run_scenario"]
