"""The one `loomsight` command. Subcommands come from the `loomsight.commands` entry points."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from runtime import __version__
from runtime.commands import BrokenCommand, Command, discover, missing_module
from runtime.errors import LoomsightError, MissingExtraError

log = logging.getLogger(__name__)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command | BrokenCommand]]:
    parser = argparse.ArgumentParser(
        prog="loomsight",
        description="Loomsight: fabric inspection on a moving web. Each subcommand has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"loomsight {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOOMSIGHT_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default INFO, or $LOOMSIGHT_LOG_LEVEL)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Command | BrokenCommand] = {}
    for cmd in discover():
        commands[cmd.name] = cmd
        if isinstance(cmd, BrokenCommand):
            sub.add_parser(cmd.name, help=f"(unavailable: {cmd.error})", add_help=False)
            continue
        extra_note = ""
        if cmd.extra and missing_module(cmd):
            extra_note = f" [needs: pip install 'loomsight[{cmd.extra}]']"
        p = sub.add_parser(
            cmd.name,
            help=cmd.help + extra_note,
            description=cmd.description or cmd.help,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        cmd.add_arguments(p)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = ["loomsight", *argv]  # for provenance records
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.command:
        parser.print_help()
        return 2
    cmd = commands[args.command]
    if isinstance(cmd, BrokenCommand):
        print(f"loomsight {cmd.name}: this command could not be loaded: {cmd.error}", file=sys.stderr)
        return 2
    try:
        if cmd.extra and (module := missing_module(cmd)):
            raise MissingExtraError(cmd.name, cmd.extra, module)
        return int(cmd.run(args) or 0)
    except LoomsightError as exc:
        print(f"loomsight {cmd.name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"loomsight {cmd.name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
