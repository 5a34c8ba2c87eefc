"""One module per ``rlix-plugin`` subcommand; each exposes ``add_parser(subparsers)`` which adds
its parser and sets ``run=function(args) -> exit code``. Modules are imported only by the CLI."""
