"""The one onnxruntime boundary: CPU sessions with onnxruntime's own logging silenced, and its
errors as one line.

A model on disk is handed to onnxruntime as a path (it reads the file and its external data
itself, no copy in Python); a model edited in memory is serialised once, and its external
tensors are read from `external_folder`. onnxruntime is imported on first use: `--help` and
commands that never run a model do not pay its import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    import onnxruntime

CPU = ["CPUExecutionProvider"]
# Only fatal messages: failures come back as exceptions, reported by mcompress as one line.
QUIET = 4


def options(
    *, optimize: bool = True, external_folder: Path | None = None
) -> onnxruntime.SessionOptions:
    """Session options: silent logging; `optimize=False` skips graph optimizations (load time
    only matters when the session runs once); `external_folder` resolves external data of a
    model given as bytes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = QUIET
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if external_folder is not None:
        opts.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(external_folder)
        )
    return opts


def session(
    model: str | os.PathLike[str] | onnx.ModelProto | bytes,
    *,
    optimize: bool = True,
    external_folder: Path | None = None,
) -> onnxruntime.InferenceSession:
    """A CPU session for a model file (read by onnxruntime), serialised bytes, or a proto
    (serialised here, once). Raises whatever onnxruntime raises; see `error_line`."""
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        source: str | bytes = model.SerializeToString()
    elif isinstance(model, bytes):
        source = model
    else:
        source = os.fspath(model)
    opts = options(optimize=optimize, external_folder=external_folder)
    return ort.InferenceSession(source, sess_options=opts, providers=CPU)


def error_line(exc: BaseException, limit: int = 300) -> str:
    """The useful part of an error on one line: onnxruntime's innermost status message (the
    text after its last `Status Message:`), first line, at most `limit` characters."""
    text = str(exc).strip().rsplit("Status Message:", 1)[-1].strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
