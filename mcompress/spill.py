"""While a model with external data is compressed, large tensors a pass writes go to a
temporary data file instead of into the proto, so a pass holds one tensor at a time.

Without this, every rewritten weight of a 2.5 GB model stays in memory as protobuf bytes until
the model is saved (and is copied once more while saving). Spilled tensors are ordinary
external tensors whose location is the absolute path of the spill file; `model_io` reads them
like any other (memory-mapped) and `save_model` streams them into the output's data file. The
spill folder is removed when `spilling` ends, by which time the model has been saved.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

# Smaller tensors stay in the proto: they cost little memory and would fragment the file.
MIN_BYTES = 1 << 20
_ALIGN = 64
_folders: set[Path] = set()
_active: list[_Spill] = []


class _Spill:
    """One append-only data file in a fresh temporary folder."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mcompress-spill-")).resolve()
        self.path = self.folder / "tensors.data"
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed by `close`
        self.offset = 0

    def write(self, tensor: onnx.TensorProto, array: np.ndarray) -> None:
        pad = (-self.offset) % _ALIGN
        self.file.write(b"\0" * pad)
        self.offset += pad
        self.file.write(array.data)
        self.file.flush()
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (
            ("location", str(self.path)),
            ("offset", str(self.offset)),
            ("length", str(array.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += array.nbytes

    def close(self) -> None:
        self.file.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def spilling(enabled: bool) -> Iterator[None]:
    """Spill large tensors written through `store` while the block runs (when `enabled`)."""
    if not enabled:
        yield
        return
    spill = _Spill()
    _folders.add(spill.folder)
    _active.append(spill)
    try:
        yield
    finally:
        _active.remove(spill)
        _folders.discard(spill.folder)
        spill.close()


def store(tensor: onnx.TensorProto, array: np.ndarray) -> bool:
    """Write `array` (C-contiguous, little-endian) as `tensor`'s data to the active spill file
    when there is one and the array is large; True when it did. `tensor`'s name, type and dims
    are already set."""
    if not _active or array.nbytes < MIN_BYTES:
        return False
    _active[-1].write(tensor, array)
    return True


def owns(path: Path) -> bool:
    """Whether `path` is a spill file of this process (an absolute location that is allowed)."""
    return path.parent in _folders
