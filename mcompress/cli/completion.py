"""Shell completion of values: preset names for `-c/--config` and `configs show`, and the
choices of every option backed by a `Literal` field of the pass's Config (`--mode`,
`--dtype`, `--compute`, `--calibration-method`, ...). Attached to the click commands Typer
builds, so no option declaration repeats a list of choices."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

from mcompress import config

# (click context, parameter, incomplete text) -> matching values; Typer's click wraps strings.
Completer = Callable[[Any, Any, str], list[str]]
_PRESET_PARAMS = {"config", "config_path"}


def preset_names() -> list[str]:
    return sorted(p.stem for p in config.PRESETS_DIR.glob("*.yaml"))


def attach(command: Any, name: str) -> None:
    """Give a click `command`'s parameters (its subcommands', for a group) value completion."""
    if hasattr(command, "commands"):
        for sub_name, sub in command.commands.items():
            attach(sub, f"{name} {sub_name}")
        return
    choices = _literal_choices(name)
    for param in command.params:
        values: list[str] | None = None
        if param.name in _PRESET_PARAMS or (name == "configs show" and param.name == "name"):
            values = preset_names()
        elif param.name in choices:
            values = choices[param.name]
        if values is not None:
            param._custom_shell_complete = _completer(values)


def _completer(values: list[str]) -> Completer:
    def complete(ctx: Any, param: Any, incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


def _literal_choices(command: str) -> dict[str, list[str]]:
    """{field: choices} for the string Literal fields of the pass a command runs."""
    from mcompress.passes import PASSES

    module = PASSES.get(command)
    if module is None:
        return {}
    found: dict[str, list[str]] = {}
    for field_name, field in module.Config.model_fields.items():
        args = typing.get_args(field.annotation)
        if typing.get_origin(field.annotation) is typing.Literal and all(
            isinstance(a, str) for a in args
        ):
            found[field_name] = list(args)
    return found
