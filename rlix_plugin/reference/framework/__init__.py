"""The reference framework: what a framework author copies. One job per module:

* :mod:`.task` -- the toy task and its reward;
* :mod:`.policy` -- the torch policy, its trainer and the weight store engines load from;
* :mod:`.engines` -- generation engines and the pool that sleeps and wakes them, a
  :class:`~rlix_plugin.supply.PipelineEngines` (the supply side);
* :mod:`.pipeline` -- the RL loop of one pipeline (the hook call order; the demand side);
* :mod:`.observer` -- :class:`~.observer.PipelineObserver`, what the pipeline and its engines
  report while they run, and the phases they go through.

May import: :mod:`rlix_plugin.hookspecs`, the front end (:mod:`rlix_plugin.frontend`,
:mod:`rlix_plugin.session`, :mod:`rlix_plugin.supply`), :mod:`rlix_plugin.metrics` and the
scenario format (:mod:`rlix_plugin.scenario`, a pipeline's config); never the harness or the
output above it, nor a backend: the hooks are its only line to the scheduler.
"""
