"""The run harness: runs a scenario's pipelines of the reference framework on one shared pool.

* :mod:`.runner` -- :func:`~.runner.run_scenario`: every pipeline in a thread on one shared
  backend, the watchdog, the static-partition baseline, never a hang;
* :mod:`.shared_backend` -- the backend (local or ray) the pipelines share;
* :mod:`.status` -- each pipeline's live status, the harness' implementation of the framework's
  :class:`~rlix_plugin.reference.framework.observer.PipelineObserver`;
* :mod:`.watchdog` -- stopping a stalled run;
* :mod:`.recorder` -- what happened over time (GPU holders, open demand, pending requests, phases);
* :mod:`.metrics` -- the run's results and their JSON form.

May import: the framework (:mod:`rlix_plugin.reference.framework`), the scenario format, the
front end, the backends and :mod:`rlix_plugin.ray`; never the output (:mod:`rlix_plugin.
reference.output`) or the commands above it.
"""
