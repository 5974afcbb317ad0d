"""Known failures, each mapped to one documented exit code (see README "Exit codes")."""

from __future__ import annotations

import signal
from types import FrameType

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


def interrupt_exit_code(signal_name: str) -> int:
    """128 + the signal number, as a shell reports a process the signal ended: 130 or 143."""
    return EXIT_TERMINATED if signal_name == "SIGTERM" else EXIT_INTERRUPTED


class McompressError(Exception):
    """A failure the user can act on: printed as one line, never as a traceback."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(McompressError):
    """Bad command-line arguments or paths."""


class ConfigError(McompressError):
    """A pipeline config that is not valid (unknown key, wrong type, out of range)."""


class ModelError(McompressError):
    """A model file that cannot be read or used: missing, corrupt, truncated, unsafe paths."""


class DataError(McompressError):
    """Validation or calibration data that does not match the model."""


class PassError(McompressError):
    """A pass that cannot be applied to this model."""


class NothingToDo(PassError):
    """A pass that finds nothing it could change in this model (no layer of its kinds): an
    error when it is the only pass, a skipped step (noted) in a pipeline of several."""


class GateError(McompressError):
    """A quality gate failed; the model and report were still written."""

    exit_code = EXIT_GATE_FAILED


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM on a single command, raised by the signal handler of `cli.main`: a
    BaseException so that no `except Exception` swallows it while every `finally` and context
    manager (`Outputs` removes its staging folder) still runs."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = exit_code


def raise_on_signals() -> None:
    """Ctrl-C and SIGTERM raise `Interrupted`, so the command unwinds (its staging files are
    removed) and exits 130 / 143 with one line. Further signals are ignored meanwhile, so that
    the cleanup itself is not cut short."""

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        name = signal.Signals(signum).name
        raise Interrupted(name, interrupt_exit_code(name))

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
