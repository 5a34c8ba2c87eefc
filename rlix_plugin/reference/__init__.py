"""The reference RL framework: small torch pipelines that learn a toy task while sharing a
logical GPU pool, integrated with the scheduler only through the rlix hooks.

It is the worked example a framework author copies. Modules, one job each:

* :mod:`.scenario` -- the scenario TOML format, loading and validation;
* :mod:`.workload` -- the work a scenario asks for (deterministic draws) and its lower bound;
* :mod:`.task` / :mod:`.policy` -- the toy task and reward; the torch policy, trainer, weight store;
* :mod:`.engines` -- generation engines and the ``rlix_resize_infer`` plugin that sleeps/wakes them;
* :mod:`.pipeline` -- the RL loop of one pipeline (the hook call order);
* :mod:`.status` / :mod:`.watchdog` -- live pipeline state; stopping a stalled run;
* :mod:`.shared_backend` -- the backend (local or ray) the pipelines share;
* :mod:`.runner` / :mod:`.metrics` / :mod:`.static` -- running a scenario, its results, the
  static-partition baseline;
* :mod:`.recorder` / :mod:`.trace` / :mod:`.timeline` / :mod:`.display` -- what happened, as a
  Perfetto trace, a picture and a live terminal view.

Importing this package is cheap; torch, rich, matplotlib and perfetto are imported by the modules
that need them.
"""
