"""How `loomsight` subcommands are declared and discovered.

A package contributes a subcommand by naming a `Command` in the `loomsight.commands` entry-point
group of pyproject.toml. A `Command` module must be light: `add_arguments` only builds argparse
options and `run` imports heavy modules (torch, ultralytics, onnx) inside itself, so that
`loomsight --help` stays fast and the runtime never imports the training stack.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "loomsight.commands"


@dataclass(frozen=True)
class Command:
    """One subcommand: its help text, its argparse options and the function that runs it.

    `extra` names the optional dependency group (`pip install 'loomsight[EXTRA]'`) whose modules
    `needs` lists; when one of them is missing the CLI says which extra to install instead of
    showing an ImportError.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    extra: str | None = None
    needs: tuple[str, ...] = ()
    description: str | None = None


@dataclass(frozen=True)
class BrokenCommand:
    """An entry point that failed to load; reported when the user asks for it."""

    name: str
    error: str


def discover() -> Iterator[Command | BrokenCommand]:
    """Yield every registered subcommand, sorted by name."""
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    for ep in eps:
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the other commands
            log.debug("could not load command %s", ep.name, exc_info=True)
            yield BrokenCommand(ep.name, f"{type(exc).__name__}: {exc}")
            continue
        if not isinstance(obj, Command):
            yield BrokenCommand(ep.name, f"entry point {ep.value} is not a runtime.commands.Command")
            continue
        yield obj


def missing_module(command: Command) -> str | None:
    """The first module of `command.needs` that cannot be found, or None."""
    import importlib.util

    for module in command.needs:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None
