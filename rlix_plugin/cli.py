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
    "rlix_plugin.commands.events",
    "rlix_plugin.commands.dashboard",
    "rlix_plugin.commands.control",
    "rlix_plugin.commands.demo",
    "rlix_plugin.commands.simulate",
)


class _Parser(argparse.ArgumentParser):
    """Bad input is one line on stderr and exit status 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rlix-plugin", description="Share one GPU pool among several RL training pipelines.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for module in COMMANDS:
        importlib.import_module(module).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from rlix_plugin.hookspecs import InvalidRequestError, NotPipelineOwnerError, RlixError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except RlixError as exc:
        # The error's first line says what was wrong; a diagnostic, if any, follows it.
        print(f"rlix-plugin: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (InvalidRequestError, NotPipelineOwnerError)) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
