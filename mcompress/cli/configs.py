"""`mcompress configs`: list the bundled presets, or print one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mcompress import config
from mcompress.cli.common import App, app, wide_console
from mcompress.errors import ConfigError

configs_app = App(
    help="List the bundled presets, or show one (mcompress configs show level2).",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(configs_app, name="configs")


def preset_paths() -> list[Path]:
    """Every bundled preset file, sorted by name."""
    return sorted(config.PRESETS_DIR.glob("*.yaml"))


def preset_description(path: Path) -> str:
    """A preset's one-line description: its first `# ` comment line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""


@configs_app.callback()
def configs(ctx: typer.Context) -> None:
    """List the bundled presets with one-line descriptions.

    Use one with --config NAME; print one with: mcompress configs show NAME
    """
    if ctx.invoked_subcommand is not None:
        return
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("preset")
    table.add_column("description")
    for path in preset_paths():
        table.add_row(path.stem, preset_description(path))
    wide_console().print(table)


@configs_app.command("show")
def configs_show(
    name: Annotated[str, typer.Argument(help="Preset name, e.g. level2.", show_default=False)],
) -> None:
    """Print a bundled preset (copy it to make your own config)."""
    path = config.PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(p.stem for p in preset_paths())
        raise ConfigError(f"no bundled preset '{name}'", f"presets: {names}")
    sys.stdout.write(path.read_text(encoding="utf-8"))
