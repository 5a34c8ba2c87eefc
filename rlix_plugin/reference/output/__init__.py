"""What a run of the harness shows:

* :mod:`.display` -- live progress bars while it runs and a table at the end (rich);
* :mod:`.trace` -- the run's recording as a Perfetto trace (perfetto);
* :mod:`.timeline` -- GPU ownership over time as a picture (matplotlib).

May import: the harness (its recording, statuses and results), the framework and
:mod:`rlix_plugin.hookspecs`; only the commands (:mod:`rlix_plugin.commands`) import it.
"""
