"""``rlix-plugin plugins``: loaded plugins, where each came from, and the hooks it implements."""

from __future__ import annotations

import argparse
import json
from typing import Any


def run(args: argparse.Namespace) -> int:
    from rlix_plugin.manager import get_plugin_manager

    pm = get_plugin_manager(args.backend)
    rows: list[dict[str, Any]] = [
        {
            "name": name,
            "kind": pm.origins[name].kind if name in pm.origins else "unknown",
            "source": pm.origins[name].source if name in pm.origins else repr(plugin),
            "hooks": pm.plugin_hooks(name),
        }
        for name, plugin in pm.list_name_plugin()
        if plugin is not None
    ]
    failed = [{"name": name, "error": error} for name, error in sorted(pm.load_errors.items())]
    if args.json:
        print(json.dumps({"backend": pm.backend_name, "plugins": rows, "failed": failed}, indent=2))
        return 0
    print(f"backend: {pm.backend_name}")
    for row in rows:
        print(f"{row['name']}  [{row['kind']}]  {row['source']}")
        for hook in row["hooks"]:
            print(f"    {hook}")
    for row in failed:
        print(f"FAILED {row['name']}: {row['error']}")
    return 0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("plugins", help="list loaded plugins and the hooks they implement")
    parser.add_argument("--backend", default=None, help="noop, local or ray (default $RLIX_BACKEND)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)
