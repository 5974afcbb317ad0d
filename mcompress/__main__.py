"""The `mcompress` program (`python -m mcompress` and the console script): Ctrl-C and SIGTERM
are handled from the start, since importing the CLI (onnx, onnxruntime) takes a second or more
and a signal then must still end in one line and exit 130 / 143, not a traceback."""

import sys

from mcompress.errors import Interrupted, raise_on_signals


def main() -> None:
    """Install the signal handlers, import the CLI, run it."""
    raise_on_signals()
    try:
        from mcompress.cli import main as cli_main
    except Interrupted as exc:
        sys.stderr.write(f"mcompress: interrupted ({exc.signal_name})\n")
        sys.exit(exc.exit_code)
    cli_main()


if __name__ == "__main__":
    main()
