"""``rlix-plugin`` command line. Each subcommand lives in :mod:`rlix_plugin.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = (
    "rlix_plugin.commands.plugins",
    "rlix_plugin.commands.status",
    "rlix_plugin.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlix-plugin", description="Share one GPU pool among several RL training pipelines."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from rlix_plugin.hookspecs import RlixError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except RlixError as exc:
        print(f"rlix-plugin: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
