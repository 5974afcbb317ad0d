"""Worker processes that stop cleanly when asked and never outlive the process they serve."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from mcompress.outputs import pid_alive

# prctl option: the kernel sends this process a signal when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_SECONDS = 0.5


@functools.cache
def _libc() -> ctypes.CDLL | None:
    with suppress(OSError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return None


def _prctl_pdeathsig(signum: int) -> None:
    """Ask Linux to send `signum` to this process when its parent dies (elsewhere: nothing).
    Safe between fork and exec once `_libc()` was loaded before the fork."""
    libc = _libc()
    with suppress(AttributeError):
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def release_freed_memory() -> None:
    """Give the memory freed so far back to the system (glibc's `malloc_trim`; nothing
    elsewhere): onnxruntime frees what constant folding a packed model's weights took when
    the session is made, but glibc keeps those pages (635 of a 694 MB peak on a pruned
    90 MB encoder) until asked."""
    libc = _libc()
    with suppress(AttributeError):
        if libc is not None:
            libc.malloc_trim(0)


def die_with_parent(parent: int, grace: float) -> None:
    """SIGTERM this process when `parent` is gone (even killed with SIGKILL): PR_SET_PDEATHSIG
    where Linux has it (the direct parent may be a fork server), and a thread polling `parent`
    anywhere; after `grace` seconds more the process exits regardless."""
    _prctl_pdeathsig(signal.SIGTERM)

    def watch() -> None:
        while pid_alive(parent):
            time.sleep(_PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)  # native code ignoring the signal: stop it anyway
        os._exit(137)

    threading.Thread(target=watch, name="mcompress-parent-watch", daemon=True).start()


def killed_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for `subprocess`: the child (a helper that holds no files of ours) is
    killed when this process dies, even by SIGKILL, instead of running on alone."""
    parent = os.getpid()
    _libc()  # loaded here: finding it runs a program, which a forked child must not do

    def setup() -> None:
        _prctl_pdeathsig(signal.SIGKILL)
        if os.getppid() != parent:  # died before prctl took effect
            os._exit(137)

    return setup


def stop_processes(pids: set[int], grace: float) -> None:
    """SIGTERM every process (each cleans up its temporary files), SIGKILL stragglers."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM in a process running workers; names the signal (exit 130 / 143)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def signal_name_of(exc: KeyboardInterrupt) -> str:
    """The signal behind an interrupt (a bare KeyboardInterrupt is Ctrl-C)."""
    return exc.signal_name if isinstance(exc, Stopped) else "SIGINT"


class CaughtSignal:
    """A SIGINT/SIGTERM noted by `deferred_signals`, raised as `Stopped` where it is safe."""

    def __init__(self) -> None:
        self.name: str | None = None

    def check(self) -> None:
        if self.name is not None:
            raise Stopped(self.name)


@contextmanager
def deferred_signals() -> Iterator[CaughtSignal]:
    """SIGINT/SIGTERM only noted while the block runs; the block raises them with `check()`.

    An exception raised by a signal handler can land inside a process pool's own locking
    (`concurrent.futures.wait` holds every future's lock), after which the pool's shutdown
    waits forever: a batch SIGTERMed at the wrong instant hung instead of exiting 143."""
    caught = CaughtSignal()

    def handler(signum: int, frame: object) -> None:
        caught.name = caught.name or signal.Signals(signum).name

    with _handled_by(handler):
        yield caught
    caught.check()


@contextmanager
def signals_after() -> Iterator[None]:
    """SIGINT/SIGTERM arriving while the block runs reach the handlers in place once it ends.

    Native code that calls back into Python turns a handler's exception into its own error:
    Ctrl-C while onnxruntime created a session was reported as "the input model does not run
    in onnxruntime: initialization failed" (exit 2, not 130)."""
    caught: list[int] = []

    def handler(signum: int, frame: object) -> None:
        caught.append(signum)

    try:
        with _handled_by(handler):
            yield
    finally:
        if caught:
            signal.raise_signal(caught[0])


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Treat SIGTERM (CI cancellation) like Ctrl-C while the block runs: both raise `Stopped`,
    a KeyboardInterrupt naming the signal, which the caller handles itself (stop its workers,
    write what it must, exit 130 / 143)."""

    def handler(signum: int, frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    with _handled_by(handler):
        yield


@contextmanager
def _handled_by(handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` for SIGINT and SIGTERM while the block runs (main thread only: elsewhere
    Python cannot set handlers), the previous handlers restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)
