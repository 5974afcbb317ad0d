"""The command group: every command's name, in the order `--help` lists them, and the module
it lives in, imported only when that command runs or help lists it."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

import typer
from typer.core import TyperGroup

# Every command, in the order `--help` lists them (everyday passes first, tooling last); each
# lives in the module `mcompress.cli.<name with underscores>`, imported only when the command
# runs or help lists it: `mcompress prune` does not pay for the imports of `batch` or `tune`.
COMMAND_ORDER = (
    "quantize", "prune", "cluster", "distill", "fp16", "strip", "run", "validate", "inspect",
    "tune", "sensitivity", "doctor", "batch", "configs", "batch-merge",
)  # fmt: skip


class LazyGroup(TyperGroup):
    """The app's commands in COMMAND_ORDER, each imported the first time it is needed."""

    # The Typer app the command modules register on (set where it is made, cli/common.py).
    app: typer.Typer

    def list_commands(self, ctx: Any) -> list[str]:
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        names = set(self.commands) | set(COMMAND_ORDER)
        return sorted(names, key=lambda name: rank.get(name, len(rank)))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """Typer's, with "Did you mean" drawn from every command, loaded or not."""
        try:
            return super().resolve_command(ctx, args)
        except typer.TyperException as exc:
            matches = difflib.get_close_matches(args[0], COMMAND_ORDER) if args else []
            message = getattr(exc, "message", "")
            if matches and message.startswith("No such command"):
                exc.message = (
                    f"{message.rstrip('.')}. Did you mean {', '.join(map(repr, matches))}?"
                )
            raise

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        from mcompress.cli import completion

        if cmd_name not in self.commands and cmd_name in COMMAND_ORDER:
            self.add_command(_load_command(self.app, cmd_name), cmd_name)
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            completion.attach(command, cmd_name)
        return command


def _load_command(app: typer.Typer, name: str) -> Any:
    """Import the module of command `name` (it registers the command on `app`) and build the
    click command Typer would have built for it."""
    importlib.import_module(f"mcompress.cli.{name.replace('-', '_')}")
    for info in app.registered_commands:
        if (
            info.name or typer.main.get_command_name(getattr(info.callback, "__name__", ""))
        ) == name:
            return typer.main.get_command_from_info(
                info,
                pretty_exceptions_short=app.pretty_exceptions_short,
                rich_markup_mode=app.rich_markup_mode,
            )
    group = next(info for info in app.registered_groups if info.name == name)
    return typer.main.get_group_from_info(
        group,
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode,
        suggest_commands=True,
    )
