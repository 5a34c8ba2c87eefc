"""The reference RL framework and the demo built on it: small torch pipelines that learn a toy
task while sharing a logical GPU pool, integrated with the scheduler only through the rlix hooks.

Three layers, each a subpackage; a lower one never imports a higher one
(``tests/core/test_layers.py`` checks it, docs/design.md §2):

* :mod:`.framework` -- the copyable framework: task, policy, engines (a
  :class:`~rlix_plugin.supply.PipelineEngines`), the RL loop of one pipeline, and the
  :class:`~.framework.observer.PipelineObserver` it reports through;
* :mod:`.harness` -- the run harness behind ``rlix-plugin demo`` / ``run``: pipelines in threads
  on one shared backend, their live status, the watchdog, the recording and the results;
* :mod:`.output` -- what a run shows: the live terminal view, the Perfetto trace, the timeline.

The scenario format they run lives below them, in :mod:`rlix_plugin.scenario`, where the simulator
reads it too. Importing these packages is cheap; torch, rich, matplotlib and perfetto are imported
by the modules that need them.
"""
