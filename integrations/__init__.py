"""Framework integrations, one subpackage each: ``rlix_plugin.integrations.miles`` and
``rlix_plugin.integrations.verl``. Importing this package imports no framework."""
