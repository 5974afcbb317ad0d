"""One private temporary folder per command: every temporary file of the run (spilled tensors,
onnxruntime's quantization files, probe inputs), in this process and in the processes it starts,
goes there. It is removed when the command ends; one left by a killed process (SIGKILL leaves
no chance to clean up: a 3 GB spill folder was once found) is removed by the next command.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mcompress.outputs import private_folder

_system_temp: list[str] = []  # the temp folder before `private_temp` replaced it


@contextmanager
def private_temp() -> Iterator[None]:
    """Point `tempfile` and TMPDIR (inherited by child processes) at a new private folder in
    the system temp folder while the block runs, then remove it. When the system temp folder
    cannot be written, temporary files go there as before (and fail there as before)."""
    system = tempfile.gettempdir()
    try:
        folder = private_folder(Path(system))
    except OSError:
        yield
        return
    previous_dir, previous_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = str(folder)
    _system_temp.append(system)
    try:
        yield
    finally:
        _system_temp.pop()
        tempfile.tempdir = previous_dir
        if previous_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous_env
        shutil.rmtree(folder, ignore_errors=True)


def multiprocessing_temp_outside() -> None:
    """Have multiprocessing make its own temporary folder (the fork server's socket, removed
    by multiprocessing at exit) in the system temp folder: a Unix socket's path may not exceed
    107 bytes, and the private folder would add 36."""
    if not _system_temp:
        return
    import multiprocessing.util  # only a command that starts processes needs it

    private = tempfile.tempdir
    tempfile.tempdir = _system_temp[-1]
    try:
        multiprocessing.util.get_temp_dir()
    finally:
        tempfile.tempdir = private
