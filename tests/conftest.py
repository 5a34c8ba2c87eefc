"""Suite-wide settings: never autoload installed rlix plugins into the project's own tests."""

import os

os.environ["RLIX_DISABLE_PLUGIN_AUTOLOAD"] = "1"
for _name in ("RLIX_BACKEND", "RLIX_BLOCK_PLUGINS", "RLIX_STRICT_PLUGINS", "RLIX_TRACE_HOOKS"):
    os.environ.pop(_name, None)

pytest_plugins = ["pytester"]
