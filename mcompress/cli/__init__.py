"""The `mcompress` command line. Commands live in one module per command, imported when the
command runs (see `common.COMMAND_ORDER`); `main` is the error boundary: one line per known
error, a log file for unexpected ones."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import traceback
from typing import Any

import typer

from mcompress.cli.common import app, err
from mcompress.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    Interrupted,
    McompressError,
    interrupt_exit_code,
    raise_on_signals,
)
from mcompress.scratch import private_temp


def main() -> None:
    """Entry point: one line per known error, a log file for unexpected ones."""
    raise_on_signals()
    try:
        _run()
    finally:
        # The command is over: a signal now would kill the interpreter while it shuts down
        # (Python restores the default action then), ending a finished run without a word.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _run() -> None:
    """Run the command; exit with its code, one line per known error."""
    try:
        with private_temp():
            code = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("mcompress: interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as exc:
        _print_usage_error(exc)
        sys.exit(EXIT_BAD_INPUT)
    except McompressError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        err.print(f"mcompress: error: {exc.message}{hint}", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except (Interrupted, KeyboardInterrupt) as exc:
        name = exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
        err.print(f"mcompress: interrupted ({name})", markup=False, highlight=False)
        sys.exit(interrupt_exit_code(name))
    except Exception as exc:
        _report_crash(exc)
        sys.exit(EXIT_INTERNAL)
    # Without standalone mode click returns (not raises) the exit code of `typer.Exit`.
    if isinstance(code, int) and code:
        sys.exit(code)


def _print_usage_error(exc: typer.TyperException) -> None:
    """A click usage error (bad option value, missing argument, unknown command) as one line
    with a short pointer to the help, instead of click's three-line usage block."""
    format_message = getattr(exc, "format_message", None)
    message = format_message() if format_message else str(exc)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{_command_path(ctx)} -h')" if ctx is not None else ""
    err.print(f"mcompress: error: {message}{hint}", markup=False, highlight=False)


def _command_path(ctx: Any) -> str:
    """`mcompress quantize` however the program was started (`python -m mcompress`, ...)."""
    names: list[str] = []
    while ctx.parent is not None:
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    return " ".join(["mcompress", *names])


def _report_crash(exc: Exception) -> None:
    """An unexpected error: its traceback goes to a log file with a unique name (two crashes
    in the same second must not overwrite each other), the user gets one line."""
    handle, name = tempfile.mkstemp(prefix="mcompress-error-", suffix=".log")
    with os.fdopen(handle, "w", encoding="utf-8") as log:
        log.write("".join(traceback.format_exception(exc)))
    err.print(
        f"mcompress: internal error: {type(exc).__name__}: {exc} "
        f"(traceback saved to {name}; please report it)",
        markup=False,
        highlight=False,
    )
