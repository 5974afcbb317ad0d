"""The `mcompress` command line. Commands live in one module per command; `main` is the
error boundary: one line per known error, a log file for unexpected ones."""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path

import typer

# Importing a command module registers its commands on `app`.
from mcompress.cli import (  # noqa: F401
    batch,
    batch_merge,
    cluster,
    configs,
    doctor,
    fp16,
    inspect,
    prune,
    quantize,
    run,
    sensitivity,
    strip,
    tune,
    validate,
)
from mcompress.cli.common import app, err
from mcompress.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, McompressError


def main() -> None:
    """Entry point: one line per known error, a log file for unexpected ones."""
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("mcompress: interrupted")
        sys.exit(130)
    except typer.TyperException as exc:
        show = getattr(exc, "show", None)
        if show:
            show()
        else:
            err.print(f"mcompress: error: {exc}", markup=False)
        sys.exit(EXIT_BAD_INPUT)
    except McompressError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        err.print(f"mcompress: error: {exc.message}{hint}", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("mcompress: interrupted; no output was written")
        sys.exit(130)
    except Exception as exc:
        log = Path(tempfile.gettempdir()) / f"mcompress-error-{time.strftime('%Y%m%d-%H%M%S')}.log"
        log.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
        err.print(
            f"mcompress: internal error: {type(exc).__name__}: {exc} "
            f"(traceback saved to {log}; please report it)",
            markup=False,
            highlight=False,
        )
        sys.exit(EXIT_INTERNAL)
    # Without standalone mode click returns (not raises) the exit code of `typer.Exit`.
    if isinstance(code, int) and code:
        sys.exit(code)
