"""Run numpy's BLAS on one thread while recovery works.

Recovery multiplies many small matrices between onnxruntime runs. OpenBLAS threads busy-wait
for each other; on a loaded machine (more runnable threads than cores) a descheduled worker
stalls every product, making a recovery pass many times slower (benchmarks/README.md). The
library numpy loaded is found in /proc/self/maps and asked through its own
`*set_num_threads*` entry point; elsewhere (no OpenBLAS, no /proc) this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads", "openblas_set_num_threads")  # fmt: skip


def _openblas() -> list[tuple[Any, Any]]:
    """(set, get) thread-count functions of every OpenBLAS loaded in this process."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower()}
    found = []
    for path in sorted(p for p in paths if p.startswith("/")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for setter in _SETTERS:
            getter = setter.replace("set_", "get_")
            if hasattr(lib, setter) and hasattr(lib, getter):
                found.append((getattr(lib, setter), getattr(lib, getter)))
                break
    return found


@contextmanager
def single_thread() -> Iterator[None]:
    """BLAS on one thread inside the block; the previous thread counts are restored after."""
    libs = _openblas()
    before = [get() for _, get in libs]
    for set_, _ in libs:
        set_(1)
    try:
        yield
    finally:
        for (set_, _), count in zip(libs, before, strict=True):
            set_(count)
