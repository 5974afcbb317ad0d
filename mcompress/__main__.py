"""The `mcompress` program (`python -m mcompress` and the console script): Ctrl-C and SIGTERM
are handled from the start, since importing the CLI (onnx, onnxruntime) takes a second or more
and a signal then must still end in one line and exit 130 / 143, not a traceback."""

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from mcompress.errors import Interrupted, raise_on_signals


def main() -> None:
    """Install the signal handlers, import the CLI, run it."""
    raise_on_signals()
    try:
        with imports_uncollected():
            from mcompress.cli import main as cli_main
    except Interrupted as exc:
        sys.stderr.write(f"mcompress: interrupted ({exc.signal_name})\n")
        sys.exit(exc.exit_code)
    cli_main()


@contextmanager
def imports_uncollected() -> Iterator[None]:
    """No garbage collection while the CLI's modules load, then every object they made is
    frozen (`gc.freeze`): modules, classes and schemas live as long as the process, and the
    collections that walked them again and again took CPU the command's own work does not
    need (figures in benchmarks/README.md)."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


if __name__ == "__main__":
    main()
