"""Worker processes that stop cleanly when asked and never outlive the process they serve."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading
import time
from contextlib import suppress

from mcompress.outputs import pid_alive

# prctl option: the kernel sends this process a signal when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_SECONDS = 0.5


def die_with_parent(parent: int, grace: float) -> None:
    """SIGTERM this process when `parent` is gone (even killed with SIGKILL): PR_SET_PDEATHSIG
    where Linux has it (the direct parent may be a fork server), and a thread polling `parent`
    anywhere; after `grace` seconds more the process exits regardless."""
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    def watch() -> None:
        while pid_alive(parent):
            time.sleep(_PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)  # native code ignoring the signal: stop it anyway
        os._exit(137)

    threading.Thread(target=watch, name="mcompress-parent-watch", daemon=True).start()


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
