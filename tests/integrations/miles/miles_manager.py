"""miles' ``RolloutManager`` for the tests: the pinned engine state machine, plus what the pinned
files leave out.

From the pinned fork (imported, never copied; see :mod:`.miles_fork`): the engine table and every
rlix method on it (``RealRolloutManagerEngineTable``: ``set_rlix_hooks``, ``get_engine_count``,
``get_engine_states``, ``shrink_engines`` with its abort / drain / pause / release order,
``expand_engines``, ``finish_init_offload``, ``activate_routing``, ``set_weight_version``),
``call_rollout_fn`` and the fully-async rollout function.

Written here after ``miles/ray/rollout.py``, which is not pinned (it starts SGLang servers):

* ``__init__``: the experimental-path switch read once (``use_experimental_refactor``), the
  rollout function loaded from ``args.rollout_function_path`` (``generate_rollout``), the data
  source; ``MILES_INIT_DEFER_ADD_WORKER=1`` starts the engines ``loading``, as miles does;
* ``generate(rollout_id)``: the default path's call, ``call_rollout_fn(self.generate_rollout,
  args, rollout_id, data_source, evaluation=False, rlix_hooks=self._rlix_hooks)``; it returns the
  samples (miles turns them into training data split by DP rank);
* :class:`SGLangEngineStandIn`, the engine handles the pinned methods call: each call is recorded
  in the manager's log; an engine holds GPU memory while resumed (and, when told to leak, after
  its release); with ``args.generate`` the reference framework's engines do the generating, and an
  engine serves only while routed;
* with ``args.router``, the router's ``/model_info`` endpoint, answering the weight version the
  routed engines were given (``update_weight_version``), which the fully-async rollout function
  reads before ``begin_progress_batch`` and each ``bump_completed``.

Methods marked *test plumbing* are not miles surfaces.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import threading
from argparse import Namespace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .miles_fork import load

miles = load()

#: Memory an engine holds on its GPU while resumed, and the size of that GPU (GiB).
ENGINE_GB = 60.0
GPU_GB = 80.0
#: A sample's index encodes its rollout (``rollout_id * ROLLOUT_STRIDE + ...``), so that work left
#: queued by a rollout that failed is recognised as stale by the next one.
ROLLOUT_STRIDE = 1_000_000


def miles_args(**overrides: Any) -> Namespace:
    """miles' args as this manager and the rollout functions read them (miles' names first)."""
    values: dict[str, Any] = dict(
        rollout_batch_size=4,
        n_samples_per_prompt=2,
        rollout_num_gpus=4,
        rollout_num_gpus_per_engine=1,
        rollout_function_path="examples.fully_async.fully_async_rollout.generate_rollout_fully_async",
        rollout_global_dataset=True,
        sglang_server_concurrency=8,
        sglang_router_ip="127.0.0.1",
        sglang_router_port=1,
        # test knobs
        pipeline_id="p1",
        seed=1,
        infer_gpus=(0, 1, 2, 3),
        sample_seconds=0.004,
        collect_timeout_s=20.0,
        generate=False,
        router=False,
        shell_engines=(),
        gate=None,
    )
    values.update(overrides)
    return Namespace(**values)


def load_function(path: Any) -> Any:
    """miles' ``load_function``: ``"package.module.name"`` -> that object (tests may also pass the
    function itself)."""
    if callable(path):
        return path
    module, _, name = str(path).rpartition(".")
    return getattr(importlib.import_module(module), name)


def enable_experimental_rollout_refactor() -> bool:
    """miles' switch (``miles/utils/environ.py``)."""
    return bool(int(os.environ.get("MILES_EXPERIMENTAL_ROLLOUT_REFACTOR", "0")))


class SGLangEngineStandIn:
    """One SGLang engine actor handle, with the call shape the pinned methods use
    (``handle.method.remote(**kwargs)``, answered through the pinned file's fake ``ray.get``)."""

    METHODS = (
        "unregister_from_router",
        "abort_all_requests",
        "is_idle",
        "pause_generation",
        "release_memory_occupation",
        "log_post_sleep_residual_diagnostics",
        "resume_memory_occupation",
        "register_with_router",
        "update_weight_version",
    )

    def __init__(self, index: int, manager: MilesRolloutManager) -> None:
        self.index = index
        self.manager = manager
        self.resident_gb = ENGINE_GB  # engines start with their weights and KV cache loaded
        self.leak_gb = 0.0  # test plumbing: memory a release leaves behind
        self.weight_version: int | None = None
        for name in self.METHODS:
            setattr(self, name, _Remote(self, name, getattr(self, f"_{name}")))

    def _pool(self, remove: tuple[int, ...], add: tuple[int, ...]) -> None:
        pool = self.manager.pool
        if pool is not None:
            pool.rlix_resize_infer(self.manager.args.pipeline_id, remove, add)

    def _unregister_from_router(self) -> None:
        self._pool((self.index,), ())  # no new work; the in-flight sample goes back to the queue

    def _abort_all_requests(self) -> None:
        return None  # the retract above already took the in-flight sample back

    def _is_idle(self) -> bool:
        return True

    def _pause_generation(self, mode: str = "retract") -> None:
        return None

    def _release_memory_occupation(self, tags: Any = None) -> None:
        self.resident_gb = self.leak_gb

    def _log_post_sleep_residual_diagnostics(self, threshold_gb: float) -> float:
        return self.resident_gb

    def _resume_memory_occupation(self, tags: Any = None) -> None:
        self.resident_gb = ENGINE_GB

    def _register_with_router(self) -> None:
        self._pool((), (self.index,))  # serves from now on, with the latest weights

    def _update_weight_version(self, weight_version: str) -> None:
        self.weight_version = int(weight_version)


class _Remote:
    def __init__(self, engine: SGLangEngineStandIn, name: str, fn: Any) -> None:
        self.engine, self.name, self.fn = engine, name, fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self.engine.manager.log.append((self.name, self.engine.index, kwargs))
        return miles.state_machine._Ref(self.fn(*args, **kwargs))


class DataSourceStandIn(miles.data_source.DataSource):
    """miles' data source: an endless supply of prompt groups (what the fully-async worker pulls,
    ``get_samples`` / ``add_samples``), and each rollout's jobs for the reference engines."""

    def __init__(self, args: Namespace) -> None:
        self.args = args
        self.router: Any = None  # the reference engine pool, with args.generate
        self.failures: dict[int, tuple[str, int]] = {}  # test plumbing: rollout -> (kind, after groups)
        self._next_group = 0
        self._returned: list[list[Any]] = []

    def get_samples(self, num_samples: int) -> list[list[Any]]:
        """``num_samples`` groups, returned ones first. While ``args.gate`` (test plumbing) is
        closed, they come back aborted, as from engines that were preempted: miles' fully-async
        loop returns such groups here and does not count them, so the rollout stays open."""
        Status = miles.types.Sample.Status
        held = self.args.gate is not None and not self.args.gate.is_open()
        groups = []
        for _ in range(num_samples):
            if self._returned:
                group = self._returned.pop(0)
            else:
                n = self.args.n_samples_per_prompt
                group = [miles.types.Sample(self._next_group * n + j) for j in range(n)]
                self._next_group += 1
            for sample in group:
                sample.status = Status.ABORTED if held else Status.COMPLETED
            groups.append(group)
        return groups

    def add_samples(self, samples: list[list[Any]]) -> None:
        self._returned.extend(samples)

    def jobs(self, rollout_id: int) -> list[Any]:
        """Rollout ``rollout_id``'s samples for the reference engines, ``n_samples_per_prompt`` per
        prompt group, with log-normal durations."""
        from rlix_plugin.reference.framework.engines import Job
        from rlix_plugin.reference.framework.task import prompts

        args = self.args
        rng = random.Random(f"miles-data/{args.seed}/{rollout_id}")
        mu = math.log(args.sample_seconds)
        n = args.n_samples_per_prompt
        return [
            Job(rollout_id, rollout_id * ROLLOUT_STRIDE + group * n + j, prompt, rng.lognormvariate(mu, 0.5))
            for group, prompt in enumerate(prompts(args.seed, rollout_id, args.rollout_batch_size))
            for j in range(n)
        ]


class MilesRolloutManager(miles.state_machine.RealRolloutManagerEngineTable):
    """miles' ``RolloutManager`` (use ``ray.remote`` on it for the actor, as miles does)."""

    def __init__(
        self, args: Namespace, pg: Any = None, *, all_engine_placements: Any = None, active_engine_indices: Any = None
    ) -> None:
        super().__init__(args.rollout_num_gpus // args.rollout_num_gpus_per_engine, shells=tuple(args.shell_engines))
        self.args = args
        self.pg = pg
        for index, info in self._engines.items():
            if info.handle is not None:
                info.handle = SGLangEngineStandIn(index, self)
        self.use_experimental_refactor = enable_experimental_rollout_refactor()
        self.generate_rollout = load_function(args.rollout_function_path)
        self.data_source = DataSourceStandIn(args)
        self.set_hooks_calls = 0
        self.pool: Any = None
        self.store: Any = None
        self._router: ThreadingHTTPServer | None = None
        if args.generate:
            self._start_engines()
        if args.router:
            self._start_router()

    def set_rlix_hooks(self, hooks: Any) -> None:
        super().set_rlix_hooks(hooks)
        self.set_hooks_calls += 1

    def generate(self, rollout_id: int) -> list[list[Any]]:
        if self.use_experimental_refactor:
            raise NotImplementedError("miles' experimental rollout path is not among the pinned files")
        output = miles.base_types.call_rollout_fn(
            self.generate_rollout,
            self.args,
            rollout_id,
            self.data_source,
            evaluation=False,
            rlix_hooks=self._rlix_hooks,
        )
        return output.samples

    # -- engines and router ---------------------------------------------------------------------

    def _start_engines(self) -> None:
        from rlix_plugin.reference.framework.engines import EnginePool
        from rlix_plugin.reference.framework.policy import Trainer, WeightStore

        args = self.args
        tp = args.rollout_num_gpus_per_engine
        gpus = tuple(args.infer_gpus)
        bundles = [gpus[i : i + tp] for i in range(0, len(gpus), tp)]
        self.store = WeightStore(Trainer(args.seed).model)  # version 0: the trainer's initial weights
        self.pool = EnginePool(args.pipeline_id, bundles, self.store, seed=args.seed, offset=1 + args.seed % 7)
        self.data_source.router = self.pool
        active = tuple(i for i, info in self._engines.items() if info.state == "active")
        if active:  # routed from the start, as miles' standalone start leaves them
            self.pool.rlix_resize_infer(args.pipeline_id, (), active)

    def routed_weight_version(self) -> int | None:
        versions = [
            info.handle.weight_version
            for info in self._engines.values()
            if info.state == "active" and info.handle is not None and info.handle.weight_version is not None
        ]
        return max(versions) if versions else None

    def _start_router(self) -> None:
        manager = self

        class ModelInfo(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                version = manager.routed_weight_version()
                if self.path != "/model_info" or version is None:
                    self.send_error(404)
                    return
                body = json.dumps({"weight_version": str(version)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self._router = ThreadingHTTPServer(("127.0.0.1", 0), ModelInfo)
        self._router.daemon_threads = True
        threading.Thread(target=self._router.serve_forever, name="miles-router", daemon=True).start()
        self.args.sglang_router_ip, self.args.sglang_router_port = "127.0.0.1", self._router.server_port

    # -- test plumbing --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "states": {i: info.state for i, info in self._engines.items()},
            "ops": [(name, index) for name, index, _ in self.log],
            "calls": list(self.log),
            "versions": {i: info.handle.weight_version for i, info in self._engines.items() if info.handle},
            "resident_gb": {i: info.handle.resident_gb for i, info in self._engines.items() if info.handle},
            "hooks": type(self._rlix_hooks).__name__ if self._rlix_hooks is not None else None,
            "set_hooks_calls": self.set_hooks_calls,
        }

    def free_gb(self, engine_indices: Any) -> dict[int, float]:
        """Free GiB on each engine's GPU (one GPU per engine): what a framework measures."""
        return {int(i): GPU_GB - self._engines[int(i)].handle.resident_gb for i in engine_indices}

    def leak_on_release(self, engine_index: int, gb: float) -> None:
        """Make the engine keep ``gb`` GiB after each release (a release that releases nothing)."""
        self._engines[engine_index].handle.leak_gb = float(gb)

    def publish_weights(self, state: Any) -> int:
        """After a training step: the new weights become the latest, and the engines still awake
        load them at once (the ``after_step`` sync to active engines)."""
        from rlix_plugin.reference.framework.policy import load_policy

        version = self.store.publish(load_policy(state))
        self.pool.sync_weights()
        return version

    def inject_failure(self, rollout_id: int, kind: str, after_groups: int) -> None:
        """Make rollout ``rollout_id`` of the on-policy rollout function fail after
        ``after_groups`` accepted groups: ``"fatal"`` takes miles' fatal-error path (end, then
        raise), ``"other"`` any other error (no end)."""
        self.data_source.failures[rollout_id] = (kind, after_groups)

    def inject_fatal_group(self, group: int) -> None:
        """Make the fully-async worker's group ``group`` end in miles' ``EnginePreemptedError``."""
        self.args.fail_fatal_at = group

    def hold(self, seconds: float) -> None:
        """Keep this call running for ``seconds`` (a long rollout or weight sync in progress)."""
        threading.Event().wait(seconds)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self._router is not None:
            self._router.shutdown()
            self._router.server_close()


class ForgetfulManager(MilesRolloutManager):
    """A RolloutManager whose ``set_rlix_hooks`` accepts the hooks and keeps nothing."""

    def set_rlix_hooks(self, hooks: Any) -> None:
        self.set_hooks_calls += 1


class ManagerWithoutSeam:
    """A miles RolloutManager from before the rlix seam (upstream miles): no ``set_rlix_hooks``."""

    def __init__(self, args: Any = None, pg: Any = None, **kwargs: Any) -> None:
        self.args = args

    def get_engine_count(self) -> int:
        return 4


class ModelUpdateServiceStandIn:
    """rlix's model update service as a sync callback calls it:
    ``sync_selected_workers(sync_id, target_engine_indices, version)``, which loads the weights into
    those engines and publishes the version itself. Here it records the calls; the reference
    engines load the latest weights when they are routed."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], int]] = []

    def sync_selected_workers(self, sync_id: Any, target_engine_indices: Any, version: int) -> int:
        self.calls.append((sorted(int(i) for i in target_engine_indices), int(version)))
        return int(version)

    def synced(self) -> list[tuple[list[int], int]]:
        return list(self.calls)
