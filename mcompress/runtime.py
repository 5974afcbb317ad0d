"""The one onnxruntime boundary: CPU sessions with onnxruntime's own logging silenced, and its
errors as one line.

A model on disk is handed to onnxruntime as a path (it reads the file and its external data
itself, no copy in Python); a model edited in memory is serialised once, and its external
tensors are read from `external_folder`. onnxruntime is imported on first use: `--help` and
commands that never run a model do not pay its import time.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx

from mcompress.processes import signals_after

if TYPE_CHECKING:
    import onnxruntime

CPU = ["CPUExecutionProvider"]
Feed = dict[str, np.ndarray]
# Only fatal messages: failures come back as exceptions, reported by mcompress as one line.
QUIET = 4


def onnxruntime_module() -> Any:
    """onnxruntime, imported with SIGINT/SIGTERM delivered once the import is done: a signal
    during its native module's start-up came back as ImportError "initialization failed"
    (clean-clone CI: Ctrl-C at 0.6 s of a quantize exited 2 "the input model does not run in
    onnxruntime")."""
    with signals_after():
        import onnxruntime

    return onnxruntime


def options(
    *,
    optimize: bool | Literal["basic"] = True,
    external_folder: Path | None = None,
    spinning: bool = True,
) -> onnxruntime.SessionOptions:
    """Session options: silent logging; `optimize=False` is for a session that runs once: no
    graph optimizations and no pre-packing of weights (both are load-time investments; the
    pre-packed copy of every MatMul weight doubled a 2.5 GB model's memory for a load check)
    and idle threads that sleep (spinning ones burn CPU while the session loads); "basic" is
    for many small sessions (recovery's graph segments): constant folding and node
    eliminations only; `external_folder` resolves external data of a model given as bytes."""
    ort = onnxruntime_module()

    ort.set_default_logger_severity(QUIET)  # sessions made inside onnxruntime's own tools
    opts = ort.SessionOptions()
    opts.log_severity_level = QUIET
    if optimize == "basic":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    elif not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.add_session_config_entry("session.disable_prepacking", "1")
        spinning = False
    if external_folder is not None:
        opts.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(external_folder)
        )
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def session(
    model: str | os.PathLike[str] | onnx.ModelProto | bytes,
    *,
    optimize: bool | Literal["basic"] = True,
    external_folder: Path | None = None,
    spinning: bool = True,
) -> onnxruntime.InferenceSession:
    """A CPU session for a model file (read by onnxruntime), serialised bytes, or a proto
    (serialised here, once). Raises whatever onnxruntime raises; see `error_line`."""
    ort = onnxruntime_module()

    if isinstance(model, onnx.ModelProto):
        source: str | bytes = model.SerializeToString()
    elif isinstance(model, bytes):
        source = model
    else:  # a symlink's target: onnxruntime reads external data beside the file it opens
        source = os.path.realpath(model)
    opts = options(optimize=optimize, external_folder=external_folder, spinning=spinning)
    with signals_after():
        return ort.InferenceSession(source, sess_options=opts, providers=CPU)


def error_line(exc: BaseException, limit: int = 300) -> str:
    """The useful part of an error on one line: onnxruntime's innermost status message (the
    text after its last `Status Message:`), without its `[ONNXRuntimeError] : 1 : FAIL :` code,
    `Load model from PATH failed:` and C++ source location, first line, at most `limit`
    characters (cut at a word, marked with `...`)."""
    text = str(exc).strip().rsplit("Status Message:", 1)[-1].strip()
    for noise in _NOISE:
        text = noise.sub("", text, count=1).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " ..."


_NOISE = [
    re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : "),
    re.compile(r"^Load model from .*? failed:"),
    # "/onnxruntime_src/.../model.cc:256 onnxruntime::Model::Model(...) " before the message
    re.compile(r"^\S+\.(?:cc|cpp|h):\d+ \S*?\(.*?\) (?=[A-Z])"),
]


def run_error(runner: Any, feed: Feed) -> str | None:
    """None when `runner` (a session) runs `feed`; else onnxruntime's first error line."""
    try:
        runner.run(None, feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        return error_line(exc)
    return None


# ---------------------------------------------------------------- memory estimate

# The largest single activation a run on guessed sizes may produce before mcompress picks
# smaller sizes: a run holds a few such tensors at once, far below the 1 GB a command may take.
ACTIVATION_BUDGET = 16 * 2**20


def node_output_bytes(source: Path | str | bytes, feeds: list[Feed]) -> list[dict[str, int]]:
    """Bytes each node writes, per feed, from onnxruntime's profiler (one session, no graph
    changes): the measure a memory estimate extrapolates from."""
    ort = onnxruntime_module()

    opts = options(optimize=False)
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "probe")
        model = source if isinstance(source, bytes) else os.fspath(source)
        sess = ort.InferenceSession(model, sess_options=opts, providers=CPU)
        for feed in feeds:
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    starts = sorted(
        e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    runs: list[dict[str, int]] = [{} for _ in starts]
    for event in events:
        size = event.get("args", {}).get("output_size")
        if event.get("cat") != "Node" or size is None or not starts:
            continue
        index = max(sum(1 for start in starts if start <= event["ts"]) - 1, 0)
        runs[index][event["name"]] = runs[index].get(event["name"], 0) + int(size)
    return runs


def extrapolate(small: dict[str, int], large: dict[str, int], ratio: float, scale: float) -> int:
    """Largest node output at `scale` times the `large` run's sizes, from the growth of each
    node between two runs whose guessed sizes differ by `ratio`: each node's bytes grow as a
    power of the size (linear for a convolution, quadratic for attention scores)."""
    worst = 0.0
    for name, size in large.items():
        before = small.get(name, 0)
        power = round(math.log(size / before) / math.log(ratio)) if before and size else 0
        worst = max(worst, size * scale ** max(power, 0))
    return int(worst)


def estimate(
    source: Path | str | bytes,
    feed_at: Callable[[int], Feed],
    low: int,
    targets: list[int],
) -> dict[int, int]:
    """Estimated largest activation (bytes) for each target size, from profiled runs at
    `low` and `2 * low` (both must run)."""
    small, large = node_output_bytes(source, [feed_at(low), feed_at(2 * low)])
    return {t: extrapolate(small, large, 2.0, t / (2 * low)) for t in targets}


_NUMPY_TYPES = {
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def typed_feed(sess: Any, feed: Feed) -> Feed:
    """`feed` cast to the types `sess` declares for its inputs: a model written with float16
    inputs and outputs (`fp16 --half-io`) is fed the same values as its float32 original."""
    declared = {i.name: _NUMPY_TYPES.get(i.type) for i in sess.get_inputs()}
    return {
        name: value.astype(declared[name])
        if declared.get(name) is not None and value.dtype != declared[name]
        else value
        for name, value in feed.items()
    }
