"""``rlix-plugin`` command line: one subcommand per job, each in its own function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _plugins(args: argparse.Namespace) -> int:
    from rlix_plugin.manager import get_plugin_manager

    pm = get_plugin_manager(args.backend)
    rows = [
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlix-plugin", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list loaded plugins and the hooks they implement")
    plugins.add_argument("--backend", default=None, help="noop, local or ray (default $RLIX_BACKEND)")
    plugins.add_argument("--json", action="store_true", help="print one JSON object")
    plugins.set_defaults(run=_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from rlix_plugin.hookspecs import RlixError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except RlixError as exc:
        print(f"rlix-plugin: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
