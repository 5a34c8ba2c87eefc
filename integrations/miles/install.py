"""Wiring at init: put the hooks into miles' ``RolloutManager`` and prove they took.

Failure mode F2 of docs/design.md is one missing call, ``rollout_manager.set_rlix_hooks(...)``: every progress call
of the rollout function then went to miles' ``NoOpRLixHooks`` and nothing failed. ``install`` makes
that call and checks its effect, in this order, failing with a clear error at the first problem
(and undoing what it did):

1. the manager has ``set_rlix_hooks`` and the engine methods (:class:`~.errors.MilesSurfaceError`);
2. for a Ray actor, the engine channel is started in its process (:mod:`.engine_channel`): from
   here on its engine methods never wait behind a running ``generate``;
3. in the manager's process: miles is set to hand the hooks to its rollout function (default
   rollout path, a rollout function with an ``rlix_hooks`` parameter: :mod:`.rollout_path`;
   :class:`~.errors.HooksNotPassedError` otherwise), and its ``shrink_engines`` takes
   ``post_sleep_vram_threshold_gb`` when one is configured (``MilesSurfaceError``);
4. its engine table matches ``actor_infer``'s DP ranks, and no engine is ``shell`` or
   mid-transition; ``active`` engines are put to sleep (the scheduler starts the pipeline with
   none awake);
5. the supply plugin (:class:`~.engines.MilesEngines`) is registered on the session's plugin
   manager, so the scheduler's resizes of this pipeline reach the engines;
6. ``set_rlix_hooks(MilesRLixHooks(...))`` -- through Ray when the manager is an actor (the
   object is pickled and rebuilds its front end there);
7. **read back**, in the manager's process: the object it now holds must be the one just sent
   (same token), and its front end must build there with the same backend, reach a live backend
   for the progress hooks, and see this pipeline registered on the scheduler. Anything else raises
   :class:`~.errors.HooksNotInstalledError` saying what was found.

The pipeline is registered first (its lease goes to the far side with the hooks); steps 1 to 4
refuse before anything else is changed, and any failure closes the session again.

Until ``install`` succeeds, :meth:`.session.MilesSession.signal_rollout_demand` refuses demand; and a
pipeline registered without it has no ``rlix_resize_infer`` owner, so the scheduler fences it at
its first wake ("the framework's hooks were never installed"). Either way, a forgotten install
fails at the first rollout instead of hanging.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rlix_plugin.hookspecs import ACTOR_INFER, ClusterSpec, InvalidRequestError, PipelineLimits

from . import rollout_path
from .engine_channel import SET_ROLLOUT, EngineChannel
from .engines import MilesEngines, WeightSync, engine_table
from .errors import HooksNotInstalledError, HooksNotPassedError, MilesSurfaceError
from .hooks import PROBE_TIMEOUT_S, PROGRESS_HOOKS, MilesRLixHooks, held_hooks, set_rollout_in
from .memory import FreeMemoryCheck, check_threshold
from .rollout_manager import CONTROL_TIMEOUT_S, ENGINE_METHODS, SET_HOOKS, ManagerProxy

if TYPE_CHECKING:
    from rlix_plugin.frontend import Hooks

    from .session import MilesSession

log = logging.getLogger(__name__)

#: The keyword of ``shrink_engines`` that carries the post-sleep memory threshold.
THRESHOLD_KEYWORD = "post_sleep_vram_threshold_gb"


class Installation:
    """What a successful install put in place; :meth:`uninstall` takes it away again."""

    def __init__(
        self,
        session: MilesSession,
        manager: ManagerProxy,
        engines: MilesEngines,
        hooks: MilesRLixHooks,
        plugin_name: str,
        probe: dict[str, Any],
    ) -> None:
        self.session = session
        self.manager = manager
        self.engines = engines
        self.hooks = hooks
        self.plugin_name = plugin_name
        self.probe = probe

    def set_rollout(self, rollout_id: int, timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        """Tell the hooks in the manager's process that the next batch is rollout ``rollout_id``
        (through the engine channel when there is one: it does not wait behind a running
        ``generate``).

        :raises InvalidRequestError: a bad ``rollout_id``, or the manager holds other hooks now.
        :raises TimeoutError: the manager did not answer within ``timeout_s``.
        """
        channel = self.manager.channel
        if channel is not None:
            channel.call(SET_ROLLOUT, self.hooks.token, rollout_id, timeout_s=timeout_s)
        else:
            self.manager.run_inside(set_rollout_in, self.hooks.token, rollout_id, timeout_s=timeout_s)

    def uninstall(self) -> None:
        """Unregister the supply plugin, clear the manager's hooks and close the engine channel
        (fire and forget: this runs on shutdown paths, where waiting on a busy manager must not
        block)."""
        pm = self.session.hooks.plugin_manager
        if pm.has_plugin(self.plugin_name):
            pm.unregister(name=self.plugin_name)
        clear_hooks(self.manager)
        channel, self.manager.channel = self.manager.channel, None
        if channel is not None:
            channel.close()


def clear_hooks(manager: ManagerProxy) -> None:
    """``set_rlix_hooks(None)``, fire and forget for an actor (it may be busy)."""
    if manager.remote:
        manager.manager.set_rlix_hooks.remote(None)
    else:
        manager.manager.set_rlix_hooks(None)


def describe_manager(manager: Any) -> dict[str, Any]:
    """Runs in the manager's process: its rollout path (:func:`.rollout_path.describe`) and the
    parameter names of its ``shrink_engines`` (``None`` when they cannot be read)."""
    try:
        shrink = list(inspect.signature(manager.shrink_engines).parameters)
    except (AttributeError, TypeError, ValueError):
        shrink = None
    return {"rollout": rollout_path.describe(manager), "shrink_parameters": shrink}


def read_back(manager: Any, token: str) -> dict[str, Any]:
    """Runs in the manager's process: what does the manager hold as its rlix hooks?

    Reads ``get_rlix_hooks()`` if the manager has one, else the attribute miles stores them in
    (``_rlix_hooks``). Returns the hooks' probe, or ``{"found": ...}`` describing what is there.
    """
    try:
        held = held_hooks(manager)
    except AttributeError as exc:
        return {"found": str(exc)}
    if not isinstance(held, MilesRLixHooks):
        return {"found": f"{type(held).__qualname__} object" if held is not None else "None"}
    if held.token != token:
        return {"found": f"MilesRLixHooks of another installation (pipeline {held.pipeline_id!r})"}
    return held.probe()


def far_side_options(backend: str, options: Mapping[str, Any], leases: Mapping[str, str]) -> dict[str, Any]:
    """Backend options for the hooks' rebuild in the manager's process: the pipeline's lease, so
    that its progress is accepted there. For ``ray``, the far side only joins the scheduler the
    pipeline registered with, never starts a new one (a fresh empty scheduler there would swallow
    progress for a pipeline it does not know)."""
    far = dict(options)
    if leases:
        far["leases"] = dict(leases)
    if backend == "ray":
        far["create_if_missing"] = False
    return far


def _install_into(
    session: MilesSession,
    rollout_manager: Any,
    *,
    sync_weights: WeightSync,
    engine_index_of_rank: Sequence[int] | None = None,
    timeout_s: float | None = None,
    post_sleep_vram_threshold_gb: float | None = None,
    free_memory_check: FreeMemoryCheck | None = None,
) -> Installation:
    """Install the hooks of ``session`` (registered) into ``rollout_manager`` and verify them
    (steps in the module docstring; parameters and errors: :func:`install`); the session keeps
    the :class:`Installation`."""
    pid = session.pipeline_id
    if session.installed:
        raise InvalidRequestError(f"pipeline {pid!r}: hooks are already installed (close the session first)")
    threshold = check_threshold(post_sleep_vram_threshold_gb)
    if free_memory_check is not None and not isinstance(free_memory_check, FreeMemoryCheck):
        raise InvalidRequestError(f"free_memory_check must be a FreeMemoryCheck or None, got {free_memory_check!r}")
    proxy = ManagerProxy(rollout_manager, pid)
    proxy.require((SET_HOOKS, *ENGINE_METHODS))
    backend = session.backend
    if proxy.remote and backend == "local":
        raise InvalidRequestError(
            f"pipeline {pid!r}: the RolloutManager is a Ray actor but the session uses the 'local' backend, whose "
            "scheduler lives in this process; use the 'ray' backend"
        )
    control_timeout = timeout_s or CONTROL_TIMEOUT_S
    if proxy.remote:
        proxy.channel = EngineChannel.start(proxy, control_timeout)
    try:
        return _install(
            session, proxy, sync_weights, engine_index_of_rank, timeout_s, control_timeout, threshold, free_memory_check
        )
    except BaseException:
        channel, proxy.channel = proxy.channel, None
        if channel is not None:
            channel.close()
        raise


def _install(
    session: MilesSession,
    proxy: ManagerProxy,
    sync_weights: WeightSync,
    engine_index_of_rank: Sequence[int] | None,
    timeout_s: float | None,
    control_timeout: float,
    threshold: float | None,
    free_memory_check: FreeMemoryCheck | None,
) -> Installation:
    pid, backend = session.pipeline_id, session.backend
    surface = proxy.run_inside(describe_manager, timeout_s=control_timeout)
    reason = rollout_path.problem(surface["rollout"])
    if backend != "noop" and reason is not None:  # with noop, rlix is off: progress goes nowhere on purpose
        raise HooksNotPassedError(
            f"pipeline {pid!r}: the RolloutManager would never hand the hooks to its rollout function: it {reason}. "
            "Every progress call would reach miles' NoOpRLixHooks and the scheduler would never see the rollout."
        )
    parameters = surface["shrink_parameters"]
    if threshold is not None and parameters is not None and THRESHOLD_KEYWORD not in parameters:
        raise MilesSurfaceError(
            f"pipeline {pid!r}: post_sleep_vram_threshold_gb={threshold} is configured but this miles' "
            f"RolloutManager.shrink_engines takes no {THRESHOLD_KEYWORD} (its parameters: {parameters}); use a "
            "miles of the rlix fork line, or pass post_sleep_vram_threshold_gb=None"
        )
    cluster: ClusterSpec = session.clusters[ACTOR_INFER]
    table = engine_table(cluster, engine_index_of_rank, int(proxy.call("get_engine_count", timeout_s=control_timeout)))
    engines = MilesEngines(
        pid,
        proxy,
        table,
        sync_weights,
        **({"timeout_s": timeout_s} if timeout_s else {}),
        post_sleep_vram_threshold_gb=threshold,
        free_memory_check=free_memory_check,
    )
    slept = engines.take_over()  # shell / mid-transition engines raise here
    if slept:
        log.info(
            "rlix: pipeline %r: put awake engines of DP ranks %s to sleep; the scheduler wakes them on demand",
            pid,
            slept,
        )

    pm = session.hooks.plugin_manager
    plugin_name = f"rlix-miles-engines-{pid}"
    if pm.has_plugin(plugin_name):
        raise InvalidRequestError(f"pipeline {pid!r}: a miles supply plugin is already registered ({plugin_name})")
    pm.register(engines, name=plugin_name)
    hooks_sent = False
    try:
        # The far side acts for the pipeline with the lease its registration here returned.
        leases = {pid: pm.backend.lease(pid)} if pm.backend is not None else {}
        hooks = MilesRLixHooks(
            pid,
            session.units.n_samples_per_prompt,
            backend=backend,
            backend_options=far_side_options(backend, session.backend_options, leases),
            autoload=session.autoload,
            engine_to_rank=engines.rank_of_engine,
            hooks=None if proxy.remote else session.hooks,
        )
        hooks_sent = True
        proxy.call(SET_HOOKS, hooks, timeout_s=control_timeout)
        # The read-back builds the hooks' front end over there and asks the scheduler once.
        probe = {
            **proxy.run_inside(read_back, hooks.token, timeout_s=control_timeout + PROBE_TIMEOUT_S),
            "rollout": surface["rollout"],
        }
        _check_probe(pid, backend, probe)
    except BaseException:
        pm.unregister(name=plugin_name)
        if hooks_sent:
            clear_hooks(proxy)
        raise
    if backend != "noop" and probe.get("control_plane") != "rlix":
        log.warning(
            "rlix: pipeline %r: RLIX_CONTROL_PLANE is %r in the RolloutManager's process, not 'rlix': miles' "
            "shrink_engines then releases engine memory without pausing generation (retract) first; set it in "
            "the RolloutManager's runtime_env",
            pid,
            probe.get("control_plane"),
        )
    if backend != "noop" and threshold is None and free_memory_check is None:
        log.warning(
            "rlix: pipeline %r: engine memory is judged by miles' engine state alone (miles reports an engine "
            "'offloaded' even when its memory was not freed); pass post_sleep_vram_threshold_gb and/or "
            "free_memory_check to install",
            pid,
        )
    installation = Installation(session, proxy, engines, hooks, plugin_name, probe)
    session.attach(installation)
    rollout = probe.get("rollout") or {}
    log.info(
        "rlix: hooks installed on the miles RolloutManager of pipeline %r and verified in its process (process id %s, "
        "backend %s; rollout function %s takes them); DP rank -> engine index %s%s",
        pid,
        probe.get("process_id"),
        probe.get("backend"),
        rollout.get("function"),
        engines.describe(),
        "; engine calls run on their own thread there" if proxy.channel is not None else "",
    )
    return installation


def _check_probe(pid: str, backend: str, probe: dict[str, Any]) -> None:
    where = f"pipeline {pid!r}: after set_rlix_hooks the RolloutManager"
    if "found" in probe:
        raise HooksNotInstalledError(
            f"{where} holds {probe['found']}, not the hooks just installed: its set_rlix_hooks did not keep them "
            "(a miles whose RolloutManager ignores set_rlix_hooks, or another install replaced them)"
        )
    if probe.get("error"):
        raise HooksNotInstalledError(
            f"{where} holds the hooks, but they cannot reach the scheduler from its process: {probe['error']}"
        )
    if probe.get("backend") != backend:
        raise HooksNotInstalledError(
            f"{where} holds the hooks, but they built the {probe.get('backend')!r} backend there instead of {backend!r}"
        )
    if backend == "noop":
        return  # rlix is off: progress goes nowhere on purpose
    missing = sorted(set(PROGRESS_HOOKS) - set(probe.get("live", ())))
    if missing:
        raise HooksNotInstalledError(
            f"{where} holds the hooks, but in its process {missing} reach only the no-op default "
            f"(is a plugin blocked there by RLIX_BLOCK_PLUGINS?)"
        )
    if probe.get("registered") is False:
        raise HooksNotInstalledError(
            f"{where} holds the hooks, but the scheduler they reach from its process does not know the pipeline "
            "(a different Ray cluster or scheduler?)"
        )


def install(
    rollout_manager: Any,
    *,
    pipeline_id: str,
    clusters: Mapping[str, ClusterSpec],
    n_samples_per_prompt: int,
    rollout_batch_size: int,
    sync_weights: WeightSync,
    engine_index_of_rank: Sequence[int] | None = None,
    backend: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    autoload: bool | None = None,
    hooks: Hooks | None = None,
    timeout_s: float | None = None,
    demand_timeout_s: float | None = None,
    post_sleep_vram_threshold_gb: float | None = None,
    free_memory_check: FreeMemoryCheck | None = None,
    samples_per_engine: int | None = None,
) -> MilesSession:
    """Register a miles pipeline and install its hooks, at pipeline init, once the
    ``RolloutManager`` exists and before the first rollout: the one way in.

    Builds a :class:`~.session.MilesSession` (``pipeline_id``, ``clusters``,
    ``n_samples_per_prompt``, ``rollout_batch_size``, ``backend``, ``backend_options``,
    ``autoload``, ``hooks`` -- your own front end -- ``demand_timeout_s`` as its ``timeout_s``,
    and ``samples_per_engine`` as its :class:`~rlix_plugin.hookspecs.PipelineLimits`), registers
    the pipeline and runs the steps of the module docstring. On failure the session is closed (the
    pipeline unregistered) and the error raised.

    :param rollout_manager: miles' ``RolloutManager``: a Ray actor handle or the object.
    :param sync_weights: Loads the latest weights into woken engines (:data:`.engines.WeightSync`).
    :param engine_index_of_rank: Local engine index of each DP rank (default: identity).
    :param timeout_s: Longest wait for one manager call (default: 60 s for control calls, 120 s for
        engine operations).
    :param post_sleep_vram_threshold_gb: Handed to every ``shrink_engines`` (:mod:`.memory`).
    :param free_memory_check: Checked before every wake (:class:`~.memory.FreeMemoryCheck`).
    :param samples_per_engine: Samples one engine (one ``actor_infer`` DP rank) runs at once,
        declared as ``PipelineLimits.samples_per_engine``. Counted in **samples**, the unit of the
        scheduler's ``step_target`` for a miles pipeline (:mod:`.units`), not groups: an engine
        serves one request per sample. ``None`` declares 1 (the default of ``PipelineLimits``),
        because no miles arg bounds one engine's batch: ``args.sglang_server_concurrency`` is one
        engine's share of a client-side limit that miles sizes for all its engines, so the engines
        left awake while rlix puts others to sleep are sent more than it; an engine's own bound is
        SGLang's ``max_running_requests``, which SGLang sizes from its KV cache unless it is set.
        Pass the batch your engines run, e.g. the ``max_running_requests`` they were launched with.
    :returns: The session: bind ``session.signal_rollout_demand_async`` to the train loop's
        ``signal_demand`` step hook, and call ``session.close()`` in the driver's ``finally``.
    :raises MilesSurfaceError: the manager lacks ``set_rlix_hooks`` or an engine method, or a
        threshold is configured and its ``shrink_engines`` does not take one.
    :raises InvalidRequestError: the engine table does not fit ``actor_infer``, the pipeline
        already has an installation, a ``local``-backend session meets a Ray actor, a memory
        option is malformed, or ``samples_per_engine`` is not an int >= 1 (refused before
        anything is registered).
    :raises EngineStateError: an engine is ``shell`` or mid-transition.
    :raises HooksNotPassedError: miles would not hand the hooks to its rollout function.
    :raises HooksNotInstalledError: the read-back did not find working hooks.
    """
    from .session import MilesSession

    options: dict[str, Any] = {}
    if demand_timeout_s is not None:
        options["timeout_s"] = demand_timeout_s
    limits = PipelineLimits(samples_per_engine=1 if samples_per_engine is None else samples_per_engine)
    session = MilesSession(
        pipeline_id=pipeline_id,
        clusters=clusters,
        n_samples_per_prompt=n_samples_per_prompt,
        rollout_batch_size=rollout_batch_size,
        hooks=hooks,
        backend=backend,
        backend_options=backend_options,
        autoload=autoload,
        limits=limits,
        **options,
    )
    session.register()
    try:
        _install_into(
            session,
            rollout_manager,
            sync_weights=sync_weights,
            engine_index_of_rank=engine_index_of_rank,
            timeout_s=timeout_s,
            post_sleep_vram_threshold_gb=post_sleep_vram_threshold_gb,
            free_memory_check=free_memory_check,
        )
    except BaseException as exc:
        session.close(reason=f"install failed: {type(exc).__name__}")
        raise
    return session


__all__ = ["Installation", "clear_hooks", "describe_manager", "far_side_options", "install", "read_back"]
